"""Email pages: content (templates, versions, approvals, layouts) and the review queue, mounted
at /email/ in `web`."""

from django.urls import path

from leadflow.web import views_email_content as views
from leadflow.web import views_email_review

urlpatterns = [
    path("", views.templates_list, name="email-templates"),
    path("templates/new/", views.template_new, name="email-template-new"),
    path("templates/preview/", views.template_live_preview, name="email-template-preview-new"),
    path("templates/contacts/", views.contact_search, name="email-contact-search"),
    path("templates/<int:template_id>/", views.template_edit, name="email-template"),
    path("templates/<int:template_id>/preview/", views.template_live_preview, name="email-template-preview"),
    path("templates/<int:template_id>/archive/", views.template_archive, name="email-template-archive"),
    path("templates/<int:template_id>/duplicate/", views.template_duplicate, name="email-template-duplicate"),
    path("templates/<int:template_id>/versions/", views.template_versions, name="email-template-versions"),
    path("templates/<int:template_id>/versions/<int:number>/", views.version_detail, name="email-version"),
    path("templates/<int:template_id>/versions/<int:number>/submit/", views.version_submit,
         name="email-version-submit"),
    path("templates/<int:template_id>/versions/<int:number>/approve/", views.version_approve,
         name="email-version-approve"),
    path("templates/<int:template_id>/versions/<int:number>/reject/", views.version_reject,
         name="email-version-reject"),
    path("templates/<int:template_id>/versions/<int:number>/restore/", views.version_edit_from,
         name="email-version-restore"),
    path("templates/<int:template_id>/versions/<int:number>/test/", views.version_test_send,
         name="email-version-test"),
    path("approvals/", views.approvals, name="email-approvals"),
    path("layouts/", views.layouts_list, name="email-layouts"),
    path("layouts/new/", views.layout_edit, name="email-layout-new"),
    path("layouts/<int:layout_id>/", views.layout_edit, name="email-layout"),
    path("layouts/<int:layout_id>/delete/", views.layout_delete, name="email-layout-delete"),
    path("review/", views_email_review.review_list, name="email-review"),
    path("review/act/", views_email_review.review_act, name="email-review-act"),
]
