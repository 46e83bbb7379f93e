"""`{% contact_segments contact %}`: the segments a contact is in, on the profile."""

from django import template

from leadflow.segments.selectors import contact_segments as segments_of

register = template.Library()


@register.inclusion_tag("web/segments/contact_segments.html")
def contact_segments(contact):
    return {"memberships": segments_of(workspace=contact.workspace, contact=contact)}
