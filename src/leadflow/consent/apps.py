from django.apps import AppConfig


class ConsentConfig(AppConfig):
    name = "leadflow.consent"
    label = "consent"
