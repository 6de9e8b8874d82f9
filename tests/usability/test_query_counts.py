"""Page speed as the laboratory's portal grows: a page or JSON endpoint asks
the database a fixed number of queries, however many rows it shows.

A lab's portal holds thousands of cases and a case hundreds of single-cell
images, so a page that asks one more query per row shown (N+1) gets slower
with every case. Each test builds the rows a page shows at a small and at a
large size (cases in the lists, smears in a case, reviewed cells on the
dashboard, ...), with predictions, heat maps, reviews, audit events, addenda
and smears marked not assessable where the page shows them, opens the page as
the role that uses it, and counts the queries with Django's
CaptureQueriesContext: the count at the large size is the count at the small
size. (Paginated lists show at most a page, but a page of 25 rows must not
cost 25 queries either.) The same holds for the Django admin's lists and case
and patient pages, and for the actions on one smear or one case (review,
not assessable, retry, final stage, sign-out, addendum) in a growing case."""
import itertools
import uuid

import pytest
from django.core.files.base import ContentFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from diagnosis import services
from diagnosis.models import Case, Notification, Patient, RejectedUpload, ReviewedExport
from tests.portal_testutils import image_bytes
from tests.screening.conftest import staging_result

pytestmark = pytest.mark.django_db

#: Rows at the two sizes. The small size holds every kind of row the builders make (five kinds of smear).
SMALL, LARGE = 5, 30
#: Extra queries allowed at the large size: none, the count is fixed.
SLACK = 0


class Lab:
    """Builds a growing laboratory through the services the portal itself uses (so audit events,
    notifications, case status and suggestion are what they would be in use)."""

    def __init__(self, *, patient, technician, pathologist, smear_factory, field, cell, make_user):
        self.patient, self.technician, self.pathologist = patient, technician, pathologist
        self.smear_factory, self.field, self.cell, self.make_user = smear_factory, field, cell, make_user
        self.serial = itertools.count(1)
        self.kinds = itertools.count(0)
        self.admin = make_user("Admin", is_staff=True)
        self.superuser = make_user(None, is_staff=True, is_superuser=True)
        self.case_kinds = itertools.count(0)

    # -- patients and cases -------------------------------------------------------------------------------------

    def new_patient(self):
        i = next(self.serial)
        return Patient.objects.create(lab_id=f"P-Q-{i:04d}", sex="MF"[i % 2], birth_year=1950 + i % 60,
                                      created_by=self.technician)

    def new_case(self, patient=None):
        i = next(self.serial)
        case = Case.objects.create(patient=patient or self.new_patient(), accession_number=f"ACC-Q-{i:04d}",
                                   created_by=self.technician, clinical_note=f"Note {i}.")
        services.record_case_opened(case, self.technician)
        return case

    def add_smear(self, case, *, settle=False):
        """One smear of the next of five kinds: a field with a heat map, confirmed; a cell flagged by the screen
        with a heat map, relabelled normal with a reason; a field outside the model's domain, labelled by the
        pathologist; a cell marked not assessable; a failed smear (marked not assessable too when `settle`,
        so that the case can be signed out) with a file rejected at upload."""
        kind = next(self.kinds) % 5
        if kind == 0:
            smear = self.field("Pre", 0.8, case_=case)
            self._heatmap(smear)
            services.review_smear(smear, self.pathologist, "Pre")
        elif kind == 1:
            smear = self.cell(0.9, case_=case)
            self._heatmap(smear)
            services.review_smear(smear, self.pathologist, "normal", "Mature lymphocyte.")
        elif kind == 2:
            smear = self.smear_factory(status="processing", case_=case, kind="field")
            services.record_prediction(smear.pk, {**staging_result("Early"), "in_domain": False, "domain_score": 0.01,
                                                  "reason": "too blurred"}, 5)
            smear.refresh_from_db()
            services.review_smear(smear, self.pathologist, "Pro", "Looks pro-B to me.")
        elif kind == 3:
            smear = self.cell(0.1, case_=case)
            services.mark_not_assessable(smear, self.pathologist, "Out of focus.")
        else:
            smear = self.smear_factory(status="failed", case_=case, error="The model could not read the image.")
            services.refresh_case(case)
            RejectedUpload.objects.create(case=case, filename=f"bad-{smear.pk}.txt", reason="Not an image.",
                                          uploaded_by=self.technician)
            if settle:
                services.mark_not_assessable(smear, self.pathologist, "Image unreadable.")
        return smear

    def _heatmap(self, smear):
        services.store_heatmap(smear.prediction.pk, image_bytes("JPEG", seed=smear.pk))

    def reviewable_case(self, patient=None):
        """Every smear classified, one reviewed (in review): in the review queue."""
        case = self.new_case(patient)
        fields = [self.field("Pre", 0.8, case_=case), self.field("Pro", 0.55, case_=case)]
        self._heatmap(fields[0])
        self.cell(0.9, case_=case)
        services.review_smear(fields[0], self.pathologist, "Pre")
        return case

    def signed_case(self, patient=None, addendum=True):
        """Signed out as Pre, its field and cell reviewed; with an addendum changing the stage."""
        case = self.new_case(patient)
        field, cell = self.field("Pre", 0.8, case_=case), self.cell(0.9, case_=case)
        services.review_smear(field, self.pathologist, "Pre")
        services.review_smear(cell, self.pathologist, "blast")
        services.sign_out(case, self.pathologist, "Pre", "Pre-B ALL.")
        if addendum:
            services.add_addendum(case, self.pathologist, "Stage revised after flow cytometry.", "Pro")
        return case

    def waiting_case(self, patient=None):
        """A smear still queued (awaiting classification)."""
        case = self.new_case(patient)
        self.smear_factory(status="queued", case_=case)
        services.refresh_case(case)
        return case

    def mixed_cases(self, n, patient=None):
        """n cases in turn in review, signed out with an addendum, awaiting classification."""
        makers = (self.reviewable_case, self.signed_case, self.waiting_case)
        for _ in range(n):
            makers[next(self.case_kinds) % 3](patient)

    # -- other rows ---------------------------------------------------------------------------------------------

    def filled_case(self, sign=False):
        """A case and a function adding k smears to it; `sign`: signed out (and given addenda) as it grows."""
        case = self.new_case()

        def add(k):
            if case.signed_out_at is not None:
                raise AssertionError("a signed-out case cannot grow")
            for _ in range(k):
                self.add_smear(case, settle=sign)

        return case, add

    def sign_with_addenda(self, case, n):
        services.sign_out(case, self.pathologist, "Pre", "Signed for the query count.")
        for i in range(n):
            services.add_addendum(case, self.pathologist, f"Addendum {i}.", ("Pro", "Pre")[i % 2])
        case.refresh_from_db()

    def uploads(self, k):
        """k smears uploaded by the technician in batches, across cases, with a rejected file each."""
        batch = uuid.uuid4()
        for i in range(k):
            case = self.new_case()
            if i % 3 == 0:
                batch = uuid.uuid4()
            smear = self.smear_factory(status="processing", case_=case, kind="field", batch=batch)
            if i % 2:
                services.record_prediction(smear.pk, staging_result("Pre"), 5)
            else:
                services.mark_failed(smear.pk, "The model could not read the image.")
            RejectedUpload.objects.create(case=case, filename=f"bad-{i}.txt", reason="Not an image.",
                                          uploaded_by=self.technician)

    def notifications(self, k):
        for _ in range(k):
            case = self.new_case()
            i = next(self.serial)
            kind = (Notification.Kind.CASE_READY, Notification.Kind.BATCH_DONE)[i % 2]
            Notification.objects.create(recipient=self.pathologist, kind=kind, case=case, text=f"Case {case} {i}.",
                                        key=f"q:{i}")

    def exports(self, k):
        statuses = list(ReviewedExport.Status)
        for _ in range(k):
            i = next(self.serial)
            requester = self.make_user("Pathologist", full_name=f"Requester {i}")
            export = ReviewedExport.objects.create(requested_by=requester, status=statuses[i % len(statuses)],
                                                   image_count=i, size_bytes=1000 * i)
            if export.status == ReviewedExport.Status.READY:
                export.file.save("export.zip", ContentFile(b"PK\x05\x06" + b"\0" * 18))


# -- what each page shows, and how it grows -------------------------------------------------------------------------
# A scenario takes the Lab and returns (url, add): add(k) adds k more of the rows the page shows.


def case_list(lab):
    return reverse("diagnosis:case_list"), lab.mixed_cases


def case_list_filtered(lab):
    return reverse("diagnosis:case_list") + "?q=ACC-Q&state=signed_out", lab.mixed_cases


def patient_list(lab):
    return reverse("diagnosis:patient_list"), lab.mixed_cases  # a new patient for each case


def patient_detail(lab):
    return reverse("diagnosis:patient_detail", args=[lab.patient.pk]), lambda k: lab.mixed_cases(k, lab.patient)


def case_create(lab):
    return reverse("diagnosis:case_create"), lambda k: [lab.new_patient() for _ in range(k)]


def patient_create(lab):
    return reverse("diagnosis:patient_create"), lambda k: [lab.new_patient() for _ in range(k)]


def _in_case(name, sign=False):
    def scenario(lab):
        case, add = lab.filled_case(sign=sign)
        return reverse(f"diagnosis:{name}", args=[case.pk]), add

    return scenario


def _signed_case(name):
    """The page of a signed-out case (with an addendum per smear pair), grown before sign-out: one case per size."""
    def scenario(lab):
        state = {}

        def add(k):
            if "case" in state:  # a signed-out case is locked: the larger size is a new case of its own
                state["n"] += k
            else:
                state["n"] = k
            case, grow = lab.filled_case(sign=True)
            lab.reviewable_case()  # something in the queue: the "next case" link
            grow(state["n"])
            lab.sign_with_addenda(case, state["n"] // 2)
            state["case"] = case
            state["url"] = reverse(f"diagnosis:{name}", args=[case.pk])

        return (lambda: state["url"]), add

    return scenario


def _smear_file(field):
    def scenario(lab):
        case, add = lab.filled_case()
        first = lab.field("Pre", case_=case)
        lab._heatmap(first)
        return reverse(f"diagnosis:smear_{field}", args=[first.pk]), add

    return scenario


def _admin_list(model, grow):
    """The admin's list of a model (staff Admin role), grown by `grow`."""
    def scenario(lab):
        return reverse(f"admin:{model}_changelist"), lambda k: grow(lab, k)

    return scenario


def admin_case_page(lab):
    case, add = lab.filled_case()
    return reverse("admin:diagnosis_case_change", args=[case.pk]), add


def admin_patient_page(lab):
    return (reverse("admin:diagnosis_patient_change", args=[lab.patient.pk]),
            lambda k: lab.mixed_cases(k, lab.patient))


def _some_cases(lab, k):
    lab.mixed_cases(k)


def _some_smears(lab, k):
    case, add = lab.filled_case()
    add(k)


def _some_addenda(lab, k):
    for _ in range(k):
        lab.signed_case()


def _some_users(lab, k):
    for i in range(k):
        lab.make_user(("Technician", "Pathologist", None)[i % 3], full_name=f"Person {i}")


def review_queue(lab):
    return reverse("diagnosis:review_queue"), lambda k: [lab.reviewable_case() for _ in range(k)]


def dashboard(lab):
    return reverse("diagnosis:dashboard"), lambda k: [lab.signed_case(addendum=False) for _ in range(k)]


def upload_queue(lab):
    return reverse("diagnosis:upload_queue"), lab.uploads


def upload_queue_status(lab):
    return reverse("diagnosis:upload_queue_status"), lab.uploads


def notifications(lab):
    return reverse("diagnosis:notifications"), lab.notifications


def exports(lab):
    return reverse("diagnosis:exports"), lab.exports


#: (who opens it, how it grows), by what the test says.
SCENARIOS = {
    "case list by cases": ("technician", case_list),
    "filtered case list by cases": ("pathologist", case_list_filtered),
    "patient list by patients": ("technician", patient_list),
    "patient page by the patient's cases": ("technician", patient_detail),
    "new case form by patients": ("technician", case_create),
    "new patient form by patients": ("technician", patient_create),
    "case page by smears (technician: audit trail, rejected files)": ("technician", _in_case("case_detail")),
    "case page by smears (pathologist)": ("pathologist", _in_case("case_detail")),
    "signed-out case page by smears and addenda": ("pathologist", _signed_case("case_detail")),
    "case status JSON by smears": ("technician", _in_case("case_status")),
    "upload form by the case's smears": ("technician", _in_case("smear_upload")),
    "review page by smears": ("pathologist", _in_case("case_review")),
    "signed-out review page by smears and addenda": ("pathologist", _signed_case("case_review")),
    "gallery by smears": ("pathologist", _in_case("case_gallery")),
    "report by smears": ("pathologist", _in_case("case_report")),
    "signed-out report by smears and addenda": ("technician", _signed_case("case_report")),
    "PDF report by smears and addenda": ("pathologist", _signed_case("case_report_pdf")),
    "smear image by the case's smears": ("pathologist", _smear_file("image")),
    "smear thumbnail by the case's smears": ("technician", _smear_file("thumbnail")),
    "heat map by the case's smears": ("pathologist", _smear_file("heatmap")),
    "review queue by cases awaiting review": ("pathologist", review_queue),
    "dashboard by reviewed smears of signed-out cases": ("pathologist", dashboard),
    "my uploads by uploaded smears and batches": ("technician", upload_queue),
    "my uploads JSON by uploaded smears and batches": ("technician", upload_queue_status),
    "notifications by notifications": ("pathologist", notifications),
    "exports by exports asked for": ("pathologist", exports),
    "admin patient list by patients": ("admin", _admin_list("diagnosis_patient", _some_cases)),
    "admin case list by cases": ("admin", _admin_list("diagnosis_case", _some_cases)),
    "admin smear list by smears": ("admin", _admin_list("diagnosis_smear", _some_smears)),
    "admin prediction list by predictions": ("admin", _admin_list("diagnosis_prediction", _some_smears)),
    "admin audit trail by audit events": ("admin", _admin_list("diagnosis_auditevent", _some_smears)),
    "admin addenda by addenda": ("admin", _admin_list("diagnosis_caseaddendum", _some_addenda)),
    "admin rejected uploads by rejected files": ("admin", _admin_list("diagnosis_rejectedupload", _some_smears)),
    "admin exports by exports": ("superuser", _admin_list("diagnosis_reviewedexport", Lab.exports)),
    "admin user list by users": ("admin", _admin_list("accounts_user", _some_users)),
    "admin case page by the case's smears": ("admin", admin_case_page),
    "admin patient page by the patient's cases": ("admin", admin_patient_page),
}


@pytest.fixture
def lab(patient, technician, pathologist, smear_factory, field, cell, make_user):
    return Lab(patient=patient, technician=technician, pathologist=pathologist, smear_factory=smear_factory,
               field=field, cell=cell, make_user=make_user)


def queries_for(client, url):
    """The queries one GET of the page runs (its body read to the end), and the response."""
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
        if response.streaming:
            b"".join(response.streaming_content)
    assert response.status_code == 200, (url, response.status_code)
    return captured.captured_queries


def _listing(queries):
    return "\n".join(f"  {q['sql'][:300]}" for q in queries)


@pytest.mark.parametrize("role, scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_a_pages_queries_do_not_grow_with_the_rows_it_shows(client, lab, role, scenario, request):
    client.force_login(getattr(lab, role))
    url, add = scenario(lab)
    resolve = url if callable(url) else (lambda: url)
    add(SMALL)
    queries_for(client, resolve())  # the first request of a process fills caches (content types ...)
    small = queries_for(client, resolve())
    add(LARGE - SMALL)
    large = queries_for(client, resolve())
    print(f"\nQUERY-COUNT {request.node.callspec.id}: {len(small)} at {SMALL}, {len(large)} at {LARGE}")
    assert len(large) <= len(small) + SLACK, (
        f"{len(small)} queries with {SMALL} rows, {len(large)} with {LARGE}; at the large size:\n{_listing(large)}"
    )


# -- actions on one smear or one case --------------------------------------------------------------------------------
# An action on one smear (review it, mark it not assessable, retry it) or on one case (save the final stage, sign it
# out, append an addendum) must not cost more queries in a case of hundreds of cells than in a case of five. A
# scenario takes the Lab and returns prepare(size): the case grown to `size` smears (or addenda), and the
# (url, form data, check) of one action on it; check() asserts that the action took effect.
# ("Confirm all remaining" is left out on purpose: it confirms, and audits, each remaining smear one by one.)


def _growing_case(lab, sign=False):
    case, add = lab.filled_case(sign=sign)
    state = {"n": 0}

    def grow(size):
        add(max(0, size - state["n"]))
        state["n"] = max(size, state["n"])
        return case

    return grow


def review_one_smear(lab):
    grow = _growing_case(lab)

    def prepare(size):
        smear = lab.field("Pre", case_=grow(size))

        def check():
            smear.refresh_from_db()
            assert smear.review_label == "Pro"

        return (reverse("diagnosis:smear_review", args=[smear.pk]),
                {"label": "Pro", "reason": "Pro-B morphology.", "version": "0"}, check)

    return prepare


def mark_one_smear_not_assessable(lab):
    grow = _growing_case(lab)

    def prepare(size):
        smear = lab.cell(0.6, case_=grow(size))

        def check():
            smear.refresh_from_db()
            assert smear.not_assessable

        return (reverse("diagnosis:smear_assessable", args=[smear.pk]),
                {"action": "not_assessable", "reason": "Crushed cell."}, check)

    return prepare


def retry_one_smear(lab):
    grow = _growing_case(lab)

    def prepare(size):
        smear = lab.smear_factory(status="failed", case_=grow(size), error="Worker lost.")

        def check():
            smear.refresh_from_db()
            assert smear.status == "queued"

        return reverse("diagnosis:smear_retry", args=[smear.pk]), {}, check

    return prepare


def save_final_stage(lab):
    grow = _growing_case(lab)
    stages = itertools.cycle(["Pro", "Pre"])

    def prepare(size):
        case, stage = grow(size), next(stages)

        def check():
            case.refresh_from_db()
            assert case.final_stage == stage

        return (reverse("diagnosis:case_finalize", args=[case.pk]),
                {"final_stage": stage, "comment": "Draft.", "action": "save",
                 "case_version": Case.objects.get(pk=case.pk).review_version}, check)

    return prepare


def sign_out_a_case(lab):
    def prepare(size):
        case, add = lab.filled_case(sign=True)  # a signed case is locked: a new one per size
        add(size)

        def check():
            case.refresh_from_db()
            assert case.is_signed_out

        return (reverse("diagnosis:case_finalize", args=[case.pk]),
                {"final_stage": "Pre", "comment": "Pre-B ALL.", "action": "sign_out",
                 "case_version": Case.objects.get(pk=case.pk).review_version}, check)

    return prepare


def append_an_addendum(lab):
    case, add = lab.filled_case(sign=True)
    add(SMALL)
    state = {"addenda": 0}
    lab.sign_with_addenda(case, 0)

    def prepare(size):
        for i in range(state["addenda"], size):
            services.add_addendum(case, lab.pathologist, f"Earlier addendum {i}.", ("Pro", "Pre")[i % 2])
        state["addenda"] = max(size, state["addenda"])
        text = f"Addendum after {case.addenda.count()}."

        def check():
            assert case.addenda.filter(text=text).exists()

        return reverse("diagnosis:case_addendum", args=[case.pk]), {"text": text, "final_stage": ""}, check

    return prepare


#: (who acts, what they do), by what the test says.
ACTIONS = {
    "reviewing one smear by the smears of its case": ("pathologist", review_one_smear),
    "marking one smear not assessable by the smears of its case": ("pathologist", mark_one_smear_not_assessable),
    "retrying one smear by the smears of its case": ("technician", retry_one_smear),
    "saving the final stage by the case's smears": ("pathologist", save_final_stage),
    "signing out by the case's smears": ("pathologist", sign_out_a_case),
    "appending an addendum by the case's addenda": ("pathologist", append_an_addendum),
}


def action_queries(client, prepare, size):
    url, data, check = prepare(size)
    with CaptureQueriesContext(connection) as captured:
        response = client.post(url, data)
    assert response.status_code == 302, (url, response.status_code)
    check()
    return captured.captured_queries


@pytest.mark.parametrize("role, scenario", ACTIONS.values(), ids=ACTIONS.keys())
def test_an_actions_queries_do_not_grow_with_the_case(client, lab, role, scenario, request):
    client.force_login(getattr(lab, role))
    prepare = scenario(lab)
    action_queries(client, prepare, SMALL)  # the first request of a process fills caches
    small = action_queries(client, prepare, SMALL)
    large = action_queries(client, prepare, LARGE)
    print(f"\nQUERY-COUNT {request.node.callspec.id}: {len(small)} at {SMALL}, {len(large)} at {LARGE}")
    assert len(large) <= len(small) + SLACK, (
        f"{len(small)} queries with {SMALL} rows, {len(large)} with {LARGE}; at the large size:\n{_listing(large)}"
    )
