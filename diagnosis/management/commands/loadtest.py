import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from diagnosis import loadtest
from diagnosis.models import Smear


class Command(BaseCommand):
    help = (
        "Queue N real images through the upload service against the RUNNING workers (make worker) and report "
        "throughput (smears/s from the first upload to the last result), upload-to-result latency p50/p95/max, "
        "failures and the workers' resident memory. The smears go into a fresh LOADTEST case, closed afterwards "
        "(every smear marked not assessable). docs/performance.md says how to measure."
    )

    def add_arguments(self, parser):
        parser.add_argument("--smears", type=int, default=200, help="How many smears to queue (default 200).")
        parser.add_argument("--kind", choices=Smear.Kind.values, default=Smear.Kind.FIELD,
                            help="field (staging model, default) or cell (screening model).")
        parser.add_argument("--data", help="Image folder, searched recursively (default: the shared data set "
                                           "of the kind).")
        parser.add_argument("--per-upload", type=int, default=None,
                            help="Files per upload, as one person's upload (default SMEAR_MAX_FILES_PER_UPLOAD).")
        parser.add_argument("--timeout", type=float, default=600, help="Seconds to wait for the results.")
        parser.add_argument("--seed", type=int, default=0, help="Which images are drawn.")
        parser.add_argument("--json", help="Also write the results (with the per-smear timeline) to this file.")
        parser.add_argument("--label", default="", help="A name for this run in the report (e.g. 'onnx, 2 cores').")
        parser.add_argument("--allow-real-data", action="store_true",
                            help="Run on a database that holds real cases (its reviewers are notified).")
        parser.add_argument("--keep-open", action="store_true",
                            help="Leave the load-test case open instead of marking its smears not assessable.")

    def handle(self, **options):
        n = options["smears"]
        per_upload = options["per_upload"] or settings.SMEAR_MAX_FILES_PER_UPLOAD
        if n < 1 or not 1 <= per_upload <= settings.SMEAR_MAX_FILES_PER_UPLOAD:
            raise CommandError(f"--smears must be at least 1 and --per-upload 1..{settings.SMEAR_MAX_FILES_PER_UPLOAD}.")
        kind = options["kind"]
        try:
            loadtest.check_database(options["allow_real_data"])
            images = loadtest.pick_images(options["data"] or loadtest.DEFAULT_DATA[kind], n, seed=options["seed"])
            case, user = loadtest.new_case()
        except loadtest.LoadTestError as exc:
            raise CommandError(str(exc)) from None
        workers = loadtest.worker_memory()
        if not workers:
            self.stderr.write("No Celery worker process found on this machine; waiting anyway (remote workers?).")
        self.stdout.write(f"Queueing {n} {kind} images into case {case.accession_number}, {per_upload} per upload...")
        run = loadtest.queue(case, user, images, kind=kind, per_upload=per_upload)
        self.stdout.write(f"Queued {len(run.queued_at)} in {run.upload_finished - run.upload_started:.1f} s "
                          f"({len(run.rejected)} rejected); waiting for the workers...")
        finished = loadtest.wait(run, options["timeout"])
        summary = loadtest.summarise(run)
        summary.update(label=options["label"], per_upload=per_upload, timed_out=not finished,
                       workers=loadtest.worker_memory(), hardware=loadtest.hardware(),
                       configuration=loadtest.configuration())
        if not options["keep_open"]:
            summary["closed"] = loadtest.close(run, user)
        self.report(summary)
        if options["json"]:
            Path(options["json"]).write_text(json.dumps(summary, indent=1) + "\n")
            self.stdout.write(f"Results written to {options['json']}")
        if not finished:
            raise CommandError(f"{summary['unfinished']} smear(s) unfinished after {options['timeout']:.0f} s: "
                               "are the workers running (make worker)?")

    def report(self, s):
        w = self.stdout.write
        w(f"Case {s['case']}: {s['smears']} smears ({s['kind']}), {s['finished']} finished, {s['failed']} failed, "
          f"{s['unfinished']} unfinished, {s['rejected']} rejected at upload")
        if s["throughput_smears_per_s"] is not None:
            w(f"Throughput: {s['throughput_smears_per_s']} smears/s "
              f"({s['finished']} in {s['first_upload_to_last_result_s']} s from the first upload to the last result; "
              f"uploading took {s['upload_s']} s)")
        if s["latency_s"]:
            lat = s["latency_s"]
            w(f"Upload-to-result latency: p50 {lat['p50']} s, p95 {lat['p95']} s, max {lat['max']} s")
        for reason in s["failure_reasons"]:
            w(f"  failed: {reason}")
        w(f"Heat maps stored by the end: {s['heatmaps_stored_at_end']} (computed after the results, low priority)")
        for p in s["workers"]:
            w(f"Worker {p['worker']} {p['role']} pid {p['pid']}: resident {p['rss_mib']} MiB "
              f"(peak {p['peak_rss_mib']} MiB)")
        c, h = s["configuration"], s["hardware"]
        w(f"Configuration: {c['database']} database, {c['broker']} broker, batch size {c['batch_size']}; "
          f"{h['cores']} cores ({h['cpu']}), {h['memory_gib']} GiB")
