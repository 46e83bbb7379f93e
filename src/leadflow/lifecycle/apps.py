from django.apps import AppConfig


class LifecycleConfig(AppConfig):
    name = "leadflow.lifecycle"
    label = "lifecycle"

    def ready(self) -> None:
        from leadflow.contacts.services import merge_hook_register
        from leadflow.lifecycle.services import merge_before

        merge_hook_register(before=merge_before)
