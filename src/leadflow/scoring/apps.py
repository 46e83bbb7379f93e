from django.apps import AppConfig


class ScoringConfig(AppConfig):
    name = "leadflow.scoring"
    label = "scoring"
    verbose_name = "Scoring"

    def ready(self) -> None:
        from leadflow.contacts.services import merge_hook_register
        from leadflow.scoring.services import contact_rescore

        # The loser's ledger entries have moved to the survivor; its scores are recomputed.
        merge_hook_register(after=lambda winner: contact_rescore(contact=winner))
