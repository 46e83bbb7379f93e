from django.apps import AppConfig


class SegmentsConfig(AppConfig):
    name = "leadflow.segments"
    label = "segments"
    verbose_name = "Segments"

    def ready(self) -> None:
        from leadflow.contacts.services import merge_hook_register
        from leadflow.segments.membership import merge_after, merge_before

        merge_hook_register(before=merge_before, after=merge_after)
