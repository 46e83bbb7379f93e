from django.core.management.base import BaseCommand

from leadflow.core.pipeline import process_pending


class Command(BaseCommand):
    help = "Process every pending event now, then exit (useful in scripts and after imports)."

    def handle(self, *args, **options):
        done = process_pending()
        self.stdout.write(f"processed {done} events")
