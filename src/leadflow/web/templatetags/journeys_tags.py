"""`{% contact_journeys contact %}`: the journeys a contact is or was in, with their history, on
the profile."""

from django import template

from leadflow.journeys.selectors import contact_journeys as journeys_of

register = template.Library()


@register.inclusion_tag("web/journeys/contact_journeys.html")
def contact_journeys(contact):
    return {"enrollments": journeys_of(contact=contact)}
