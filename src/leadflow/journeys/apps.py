from django.apps import AppConfig


class JourneysConfig(AppConfig):
    name = "leadflow.journeys"
    label = "journeys"
    verbose_name = "Journeys"

    def ready(self) -> None:
        from leadflow.contacts.services import merge_hook_register
        from leadflow.journeys.triggers import merge_before

        merge_hook_register(before=merge_before)
