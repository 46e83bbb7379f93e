"""The rules a new workspace starts with (docs/scoring.md lists them). Edit them to your market."""

from __future__ import annotations

SENIOR_WORDS = ["chief", "ceo", "cto", "cmo", "cfo", "coo", "founder", "owner", "president", "vp",
                "vice president", "director", "head of"]

FIT_RULES = [
    {"name": "Business email", "points": 15,
     "condition": {"field": "email_domain_type", "op": "eq", "value": "business"}},
    {"name": "Free-mail address", "points": -10,
     "condition": {"field": "email_domain_type", "op": "eq", "value": "free"}},
    {"name": "Senior title (director and above)", "points": 25,
     "condition": {"any": [{"field": "title", "op": "contains", "value": w} for w in SENIOR_WORDS]}},
    {"name": "Manager title", "points": 10,
     "condition": {"field": "title", "op": "contains", "value": "manager"}},
    {"name": "Student or intern", "points": -15,
     "condition": {"any": [{"field": "title", "op": "contains", "value": "student"},
                           {"field": "title", "op": "contains", "value": "intern"}]}},
    {"name": "Company of 50 to 5,000 employees", "points": 20,
     "condition": {"field": "company.traits.employees", "op": "between", "value": [50, 5000]}},
    {"name": "Target industry", "points": 10,
     "condition": {"field": "company.traits.industry", "op": "in",
                   "value": ["software", "saas", "technology", "internet", "information technology"]}},
]

ENGAGEMENT_RULES = [
    {"name": "Page view", "points": 1, "daily_cap": 10, "expires_after_days": 90,
     "condition": {"type": "page"}},
    {"name": "Pricing page visit", "points": 10, "daily_cap": 10,
     "condition": {"type": "page", "url_contains": "/pricing"}},
    {"name": "Demo page visit", "points": 10, "daily_cap": 10,
     "condition": {"type": "page", "url_contains": "/demo"}},
    {"name": "Lead magnet download", "points": 15, "daily_cap": 30,
     "condition": {"event": "Asset Downloaded"}},
    {"name": "Webinar attended", "points": 20, "condition": {"event": "Webinar Attended"}},
    {"name": "Email click", "points": 5, "daily_cap": 15, "condition": {"event": "Email Clicked"}},
    {"name": "Form submission", "points": 10, "daily_cap": 20, "condition": {"event": "Form Submitted"}},
    {"name": "Product usage", "points": 3, "daily_cap": 15,
     "condition": {"any": [{"event": "Signed In"}, {"event": "Feature Used"}, {"event": "Trial Started"}]}},
    {"name": "Unsubscribed", "points": -20, "condition": {"event": "Unsubscribed"}},
    {"name": "Careers page visit", "points": -10, "daily_cap": 10,
     "condition": {"type": "page", "url_contains": "/careers"}},
]
