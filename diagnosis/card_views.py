"""The models, as their cards describe them: what each shipped model is for, its version, what was measured and its
limitations, for everyone who works with its answers; and which versions made this portal's predictions, so a
card that does not describe the model in use shows it. The cards are read through ``ml.runtime.cards``, imported
when a page needs it: importing ``ml`` loads ``ml.runtime``, which the web process keeps out until then."""
import markdown
import nh3
from django.http import FileResponse, Http404
from django.urls import reverse
from django.utils.safestring import mark_safe
from django.views import View
from django.views.generic import TemplateView

from accounts.mixins import RolePermissionRequiredMixin

from . import selectors
from .models import Prediction

# What a card's markdown may become: text, lists, tables, code, figures and links; nothing active, no styles.
CARD_TAGS = {"h2", "h3", "h4", "p", "ul", "ol", "li", "strong", "em", "code", "pre", "blockquote", "br", "hr",
             "table", "thead", "tbody", "tr", "th", "td", "img", "a"}
CARD_ATTRIBUTES = {"img": {"src", "alt"}, "a": {"href"}, "th": {"align"}, "td": {"align"}, "h2": {"id"},
                   "h3": {"id"}}


def card_html(text):
    """Markdown -> HTML fit for the page: sanitised (a card is a file of the installation, still nothing in it may
    run), tables in Bootstrap's style, headings with ids for the contents list. Returns (html, [(id, title)])."""
    converter = markdown.Markdown(extensions=["tables", "sane_lists", "toc"],
                                  extension_configs={"tables": {"use_align_attribute": True},
                                                     "toc": {"toc_depth": "2"}})
    html = nh3.clean(converter.convert(text), tags=CARD_TAGS, attributes=CARD_ATTRIBUTES, url_schemes={"https"},
                     link_rel="noopener noreferrer")
    html = html.replace("<table>", '<div class="table-responsive"><table class="table table-sm">').replace(
        "</table>", "</table></div>")
    contents = [(token["id"], token["name"]) for token in converter.toc_tokens]
    return mark_safe(html), contents  # noqa: S308 - cleaned by nh3 just above


def _task_display(name):
    return Prediction.Task(name).label if name in Prediction.Task.values else name


def _versions(card):
    """This portal's predictions by model version, each marked whether the card describes it."""
    return [{**row, "described": row["model_version"] == card.version}
            for row in selectors.model_versions_in_use(card.name)]


def _body(card):
    """The card without its title line (the page has its own heading)."""
    lines = card.markdown.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join(lines)


def read_card(name):
    from ml.runtime.cards import read_card as read

    return read(name)


def shipped_cards():
    from ml.runtime.cards import shipped_cards as shipped

    return shipped()


def _card_or_404(name):
    card = read_card(name)
    if card is None:
        raise Http404("No such model card.")
    return card


class ModelCardListView(RolePermissionRequiredMixin, TemplateView):
    """Every shipped model: purpose, version, the versions in use here, limitations."""

    permission_required = "diagnosis.view_case"
    template_name = "diagnosis/model_cards.html"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        ctx["models"] = [{
            "card": card,
            "task_display": _task_display(card.name),
            "purpose": card_html(card.purpose)[0],
            "limitations": card_html(card.section("Limitations"))[0],
            "versions": _versions(card),
        } for card in shipped_cards()]
        return ctx


class ModelCardView(RolePermissionRequiredMixin, TemplateView):
    """One model's whole card, with its figures."""

    permission_required = "diagnosis.view_case"
    template_name = "diagnosis/model_card.html"

    def get_context_data(self, **kwargs):
        ctx = super().get_context_data(**kwargs)
        card = _card_or_404(kwargs["name"])
        body, contents = card_html(card.for_web(
            lambda i: reverse("diagnosis:model_card_figure", args=[card.name, i]), _body(card)))
        ctx.update(card=card, task_display=_task_display(card.name), body=body, contents=contents,
                   versions=_versions(card))
        return ctx


class ModelCardFigureView(RolePermissionRequiredMixin, View):
    """A figure the card shows, by its position in the card: never a path from the request."""

    permission_required = "diagnosis.view_case"

    def get(self, request, name, index):
        figures = _card_or_404(name).figures
        if index >= len(figures):
            raise Http404("No such figure.")
        response = FileResponse(open(figures[index], "rb"), content_type="image/png")
        response["X-Content-Type-Options"] = "nosniff"
        return response
