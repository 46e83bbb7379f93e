from django.apps import AppConfig


class PredictiveConfig(AppConfig):
    name = "leadflow.predictive"
    label = "predictive"
    verbose_name = "Predictive scoring"
