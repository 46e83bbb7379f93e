"""Rendering a template version for one message. SCAFFOLD: replaced by the content work."""

from __future__ import annotations

from dataclasses import dataclass

from jinja2.sandbox import SandboxedEnvironment


@dataclass
class Rendered:
    subject: str
    preheader: str
    html: str
    text: str


def message_render(*, message, extra: dict | None = None) -> Rendered:
    env = SandboxedEnvironment(autoescape=True)
    version = message.version
    context = {"contact": message.contact, **(extra or {})}
    return Rendered(subject=env.from_string(version.subject).render(context),
                    preheader=env.from_string(version.preheader).render(context),
                    html=env.from_string(version.html).render(context),
                    text=env.from_string(version.text or "").render(context))
