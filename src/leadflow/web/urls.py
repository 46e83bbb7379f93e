"""URLs of the marketer UI, mounted at the site root (namespace `web`)."""

from django.contrib.auth import views as auth_views
from django.urls import include, path

from leadflow.web import views

app_name = "web"

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(template_name="web/login.html",
                                                redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("workspace/", views.workspace_switch, name="workspace-switch"),
    path("contacts/", views.contacts_list, name="contacts"),
    path("contacts/<int:contact_id>/", views.contact_detail, name="contact"),
    path("companies/", views.companies_list, name="companies"),
    path("forms/", views.forms_list, name="forms"),
    path("forms/new/", views.form_edit, name="form-new"),
    path("forms/<int:form_id>/", views.form_detail, name="form"),
    path("forms/<int:form_id>/edit/", views.form_edit, name="form-edit"),
    path("magnets/", views.magnets_list, name="magnets"),
    path("magnets/new/", views.magnet_edit, name="magnet-new"),
    path("magnets/<int:magnet_id>/edit/", views.magnet_edit, name="magnet-edit"),
    path("sources/", views.sources, name="sources"),
    path("import/", views.contacts_import_view, name="import"),
    path("settings/", views.settings_page, name="settings"),
    path("scoring/", include("leadflow.web.urls_scoring")),
    path("sales/", include("leadflow.web.urls_sales")),
    path("segments/", include("leadflow.web.urls_segments")),
    path("journeys/webhooks/", include("leadflow.web.urls_journey_webhooks")),
    path("journeys/", include("leadflow.web.urls_journeys")),
    path("email/", include("leadflow.web.urls_email")),
]
