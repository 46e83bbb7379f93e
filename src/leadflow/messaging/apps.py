from django.apps import AppConfig


class MessagingConfig(AppConfig):
    name = "leadflow.messaging"
    label = "messaging"
    verbose_name = "Messaging"
