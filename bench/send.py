"""Benchmark: email dispatch — messages rendered, gated, signed and delivered per second.

On PostgreSQL: creates the database `leadflow_bench_send` on postgresql://postgres@127.0.0.1:5432/,
migrates it, makes one workspace with a sender, a sending domain (2048-bit DKIM key), a server
pointing at a local SMTP sink (aiosmtpd in its own process, accepting and discarding), a realistic
marketing template (a layout with a <style> block the renderer inlines, personalisation from the
contact and company, a loop, a conditional, six tracked links, the unsubscribe link and postal
address) and N contacts with a company each. Then:

1. one worker: N messages queued (`messages_queue_bulk`), one process calls `dispatch_run()` until
   the outbox is empty;
2. two workers: N more queued, two processes drain it in parallel (`SELECT … FOR UPDATE SKIP
   LOCKED` splits the rows).

Every message goes through the consent gate, `message_render` (Jinja2 sandbox, tracked links,
css-inline), MIME building, DKIM signing and SMTP to the sink. Prints messages/s for each run and
the peak RSS of the workers, where the machine's CPU went per message (the workers, their
dispatching threads, the sink, the PostgreSQL backends serving the workers; read from /proc),
checks that the sink received exactly the messages marked sent, then drops the database.

Usage: python bench/send.py [--messages N] [--pool-size P] [--sink aiosmtpd|lean] [--no-pipelining] [--profile] [--keep]
  --sink      aiosmtpd (default): the aiosmtpd server, about 1.5 ms of CPU per message on this
              machine, taken from the cores the workers share; lean: a minimal asyncio SMTP server
              (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT, nothing else) that costs a fraction of that,
              to measure the dispatcher rather than the sink
  --no-pipelining  the sink does not offer PIPELINING (RFC 2920; the large providers and Postfix
              do, so by default it does): four round trips per message instead of two
  --profile   run the one-worker pass under cProfile (timed by the dispatching thread's CPU, so GIL
              waits do not count) and print the top functions
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time

from benchlib import SERVER, rss_mb, run_workers

DB = "leadflow_bench_send"

LAYOUT = """<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { margin: 0; padding: 0; background: #f4f5f7; font-family: Helvetica, Arial, sans-serif; }
  .wrap { max-width: 600px; margin: 0 auto; background: #ffffff; }
  .header { padding: 24px; background: #1b2a4a; color: #ffffff; font-size: 20px; font-weight: bold; }
  .content { padding: 24px; color: #333333; font-size: 16px; line-height: 1.5; }
  .content h1 { font-size: 24px; color: #1b2a4a; margin: 0 0 16px; }
  .item { padding: 12px 0; border-bottom: 1px solid #e5e7eb; }
  .item a { color: #2563eb; text-decoration: none; font-weight: bold; }
  .button { display: inline-block; padding: 12px 24px; background: #2563eb; color: #ffffff;
            border-radius: 4px; text-decoration: none; }
  .footer { padding: 24px; color: #6b7280; font-size: 12px; text-align: center; }
  .footer a { color: #6b7280; }
</style></head>
<body><div class="wrap">
  <div class="header">Acme Analytics</div>
  <div class="content">{{ content }}</div>
  <div class="footer">
    <p>You receive this because you signed up at acme.example.</p>
    <p>{{ postal_address }}</p>
    <p><a href="{{ unsubscribe_url }}">Unsubscribe</a> · <a href="{{ preferences_url }}">Email preferences</a></p>
  </div>
</div></body></html>"""

BODY = """<h1>Hi {{ contact.first_name | default("there") }}, your {{ contact.traits.plan | default("free") }} plan update</h1>
<p>Teams like {{ company.name | default("yours") }} ({{ company.traits.employees | default("a few") }} people)
use these three reports the most this month:</p>
{% for report in ["Funnel conversion", "Cohort retention", "Attribution by source"] %}
<div class="item"><a href="https://acme.example/reports/{{ loop.index }}?ref=email">{{ report }}</a>
  <p>See how {{ report | lower }} changed for your account since {{ contact.traits.signup_month | default("last month") }}.</p></div>
{% endfor %}
{% if contact.traits.plan == "pro" %}
<p>As a Pro customer you can export every report: <a href="https://acme.example/exports">open exports</a>.</p>
{% else %}
<p>Upgrade to Pro to export every report: <a href="https://acme.example/pricing">see plans</a>.</p>
{% endif %}
<p><a class="button" href="https://acme.example/dashboard">Open your dashboard</a></p>
<p>Questions? Just reply, or read <a href="https://docs.acme.example/getting-started">the guide</a>.</p>
<p>— The Acme team</p>"""


def sh(*args: str, env: dict | None = None) -> None:
    subprocess.run(args, check=True, env=env)


def psql(sql: str) -> None:
    sh("psql", f"{SERVER}/postgres", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql)


# --- the sink -----------------------------------------------------------------------------------

def proc_cpu(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` (Linux /proc), None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def lean_sink_main(port_queue, count_value, pipelining: bool) -> None:
    """A minimal SMTP server on asyncio's Protocol: greets, answers EHLO/HELO, MAIL, RCPT, RSET,
    NOOP and QUIT, reads DATA up to the final dot, counts and discards. It reads every command
    in its buffer in turn, so it can offer PIPELINING."""
    ehlo = b"250-lean-sink\r\n250-8BITMIME\r\n" + (b"250-PIPELINING\r\n" if pipelining else b"") + b"250 SMTPUTF8\r\n"
    import asyncio
    import socket

    class Session(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.buffer, self.in_data = transport, b"", False
            transport.write(b"220 lean-sink ESMTP\r\n")

        def data_received(self, data):
            self.buffer += data
            while self.buffer:
                if self.in_data:
                    end = 0 if self.buffer.startswith(b".\r\n") else self.buffer.find(b"\r\n.\r\n")
                    if end < 0:
                        return
                    self.buffer = self.buffer[end + (3 if end == 0 else 5):]
                    self.in_data = False
                    with count_value.get_lock():
                        count_value.value += 1
                    self.transport.write(b"250 2.0.0 OK\r\n")
                    continue
                line, found, rest = self.buffer.partition(b"\r\n")
                if not found:
                    return
                self.buffer = rest
                verb = line[:4].upper()
                if verb == b"EHLO":
                    self.transport.write(ehlo)
                elif verb == b"DATA":
                    self.in_data = True
                    self.transport.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                elif verb == b"QUIT":
                    self.transport.write(b"221 Bye\r\n")
                    self.transport.close()
                    return
                else:  # HELO, MAIL, RCPT, RSET, NOOP
                    self.transport.write(b"250 OK\r\n")

    async def serve():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = await asyncio.get_running_loop().create_server(Session, "127.0.0.1", port)
        port_queue.put(port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def sink_main(port_queue, count_value, pipelining: bool) -> None:
    """An aiosmtpd server that accepts everything and keeps only a count. aiosmtpd reads commands
    one at a time, so pipelined ones simply queue; it offers PIPELINING when asked to."""
    import socket
    import threading

    from aiosmtpd.controller import Controller

    class Discard:
        async def handle_EHLO(self, server, session, envelope, hostname, responses):
            session.host_name = hostname
            if pipelining:
                responses.insert(-1, "250-PIPELINING")
            return responses

        async def handle_DATA(self, server, session, envelope):
            with count_value.get_lock():
                count_value.value += 1
            return "250 2.0.0 OK"

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(Discard(), hostname="127.0.0.1", port=port, decode_data=False, ready_timeout=10)
    controller.start()
    port_queue.put(port)
    threading.Event().wait()


# --- setup (in this process, with Django) -------------------------------------------------------

def django_setup(url: str) -> None:
    os.environ["LEADFLOW_DATABASE_URL"] = url
    os.environ.setdefault("LEADFLOW_DATA_DIR", tempfile.mkdtemp(prefix="leadflow-bench-"))
    os.environ.setdefault("LEADFLOW_SECRET_KEY", "bench-secret-key")
    os.environ.setdefault("LEADFLOW_PUBLIC_URL", "https://lf.acme.example")
    os.environ["DJANGO_SETTINGS_MODULE"] = "leadflow.settings"
    os.environ["LEADFLOW_LOG_LEVEL"] = "WARNING"
    import django

    django.setup()


def prepare(*, messages: int, sink_port: int, pool_size: int) -> dict:
    from leadflow.contacts.models import Company, Contact
    from leadflow.core.services import workspace_create
    from leadflow.messaging.models import Template, TemplateVersion
    from leadflow.messaging.sending import (messaging_settings_update, sending_domain_create,
                                            sending_server_create)

    ws = workspace_create(name="Bench Send")
    messaging_settings_update(workspace_id=ws.pk, from_name="Acme Analytics", from_email="news@acme.example",
                              reply_to="support@acme.example", postal_address="Acme Inc.\n1 Market St\nSan Francisco")
    sending_domain_create(workspace=ws, domain="acme.example", bounce_domain="bounces.acme.example")
    sending_server_create(workspace=ws, name="Sink", url=f"smtp://127.0.0.1:{sink_port}", is_default=True,
                          rate_per_second=0, pool_size=pool_size)
    template = Template.objects.create(workspace=ws, name="Monthly reports", slug="monthly-reports")
    version = TemplateVersion.objects.create(workspace=ws, template=template, number=1,
                                             subject="{{ contact.first_name | default('Hi') }}, your reports for March",
                                             preheader="Three reports teams like yours read most", html=BODY,
                                             layout_html=LAYOUT, status="approved", submitted_at=time_now())
    template.approved_version = version
    template.save(update_fields=["approved_version"])
    companies = Company.objects.bulk_create([Company(workspace=ws, name=f"Company {i}", domain=f"company{i}.example",
                                                     traits={"employees": 10 + i * 7})
                                             for i in range(max(1, messages // 20))])
    Contact.objects.bulk_create([Contact(workspace=ws, email=f"person{i}@example.org", first_name=f"Person{i}",
                                         last_name="Bench", company=companies[i % len(companies)], timezone="UTC",
                                         traits={"plan": "pro" if i % 3 == 0 else "free", "signup_month": "January"})
                                 for i in range(messages)], batch_size=2000)
    return {"workspace": ws.pk, "template": template.pk}


def time_now():
    from leadflow.core import clock

    return clock.now()


def queue(info: dict, prefix: str) -> int:
    from leadflow.contacts.models import Contact
    from leadflow.messaging.models import Template
    from leadflow.messaging.outbox import messages_queue_bulk

    template = Template.objects.select_related("approved_version").get(pk=info["template"])
    contacts = list(Contact.objects.filter(workspace_id=info["workspace"]).order_by("pk"))
    return messages_queue_bulk(workspace_id=info["workspace"], contacts=contacts, template=template,
                               version=template.approved_version, source="bench", dedupe_prefix=prefix)


# --- a worker (its own process) -----------------------------------------------------------------

def worker_main(url: str, profile: bool) -> None:
    django_setup(url)
    from leadflow.messaging.dispatch import dispatch_run, runtime
    from leadflow.messaging.models import Message

    def drain() -> int:
        done = 0
        idle = 0
        while idle < 3:
            n = dispatch_run(limit=500)
            done += n
            if n:
                idle = 0
            elif not Message.objects.filter(status__in=["queued", "sending"]).exists():
                break
            else:
                idle += 1
                time.sleep(0.05)
        return done

    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    backend_start = proc_cpu(backend)
    start, cpu_start, thread_start = time.perf_counter(), time.process_time(), time.thread_time()
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile(time.thread_time)  # CPU of the dispatching thread, not GIL waits
        done = profiler.runcall(drain)
        stats = pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative")
        stats.print_stats(35)
        stats.sort_stats("tottime").print_stats(25)
    else:
        done = drain()
    end, cpu, thread_cpu = time.perf_counter(), time.process_time() - cpu_start, time.thread_time() - thread_start
    backend_end = proc_cpu(backend)
    runtime().close()
    print(json.dumps({"done": done, "start": start, "end": end, "seconds": end - start, "cpu": cpu,
                      "thread_cpu": thread_cpu, "rss_mb": rss_mb(),
                      "db_cpu": None if backend_start is None or backend_end is None else backend_end - backend_start}),
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--pool-size", type=int, default=2)
    parser.add_argument("--sink", choices=["aiosmtpd", "lean"], default="aiosmtpd")
    parser.add_argument("--no-pipelining", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker, args.profile)
        return

    url = f"{SERVER}/{DB}"
    psql(f"DROP DATABASE IF EXISTS {DB}")
    psql(f"CREATE DATABASE {DB}")
    port_queue, count = multiprocessing.Queue(), multiprocessing.Value("l", 0)
    sink = multiprocessing.Process(target=lean_sink_main if args.sink == "lean" else sink_main,
                                   args=(port_queue, count, not args.no_pipelining), daemon=True)
    sink.start()
    try:
        port = port_queue.get(timeout=30)
        env = {**os.environ, "LEADFLOW_DATABASE_URL": url}
        sh(sys.executable, "-m", "leadflow", "migrate", "-v", "0", env=env)
        django_setup(url)
        from django.db import connection

        from leadflow.messaging.models import Message

        t0 = time.perf_counter()
        info = prepare(messages=args.messages, sink_port=port, pool_size=args.pool_size)
        print(f"setup: workspace, DKIM key, {args.messages:,} contacts in {time.perf_counter() - t0:.1f} s")
        figures = {}
        for workers, prefix in ((1, "one:"), (2, "two:")):
            t0 = time.perf_counter()
            queued = queue(info, prefix)
            print(f"queued {queued:,} messages in {time.perf_counter() - t0:.1f} s")
            before, sink_before, load_before = count.value, proc_cpu(sink.pid), os.getloadavg()[0]
            connection.close()
            results = run_workers(__file__, ["--worker", url], workers,
                                  first_args=["--profile"] if args.profile and workers == 1 else [])
            sink_cpu = proc_cpu(sink.pid)
            wall = max(r["end"] for r in results) - min(r["start"] for r in results)
            sent = Message.objects.filter(dedupe_key__startswith=prefix, status="sent").count()
            received = count.value - before
            others = Message.objects.filter(dedupe_key__startswith=prefix).exclude(status="sent").count()
            rate = sent / wall
            figures[workers] = rate
            cpu = sum(r["cpu"] for r in results)
            per = 1000 / max(sent, 1)
            thread_cpu = sum(r["thread_cpu"] for r in results)
            db = [r["db_cpu"] for r in results]
            db_cpu = f"{sum(db) * per:.2f}" if None not in db else "n/a"
            sink_used = f"{(sink_cpu - sink_before) * per:.2f}" if None not in (sink_cpu, sink_before) else "n/a"
            print(f"{workers} worker{'s' if workers > 1 else ''}: {sent:,} sent in {wall:.2f} s = {rate:,.0f} msg/s"
                  f" ({rate / workers:,.0f} per worker); worker CPU {cpu:.1f} s = {cpu * per:.2f} ms"
                  f" per message ({sent / max(cpu, 1e-9):,.0f} msg per CPU-second); sink received {received:,}; "
                  f"not sent {others}; peak RSS per worker {max(r['rss_mb'] for r in results):.0f} MB; "
                  f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
            print(f"  CPU per message: workers {cpu * per:.2f} ms (dispatching threads {thread_cpu * per:.2f}, "
                  f"SMTP threads {(cpu - thread_cpu) * per:.2f}), {args.sink} sink{'' if args.no_pipelining else ' (PIPELINING)'} {sink_used} ms, "
                  f"PostgreSQL backends of the workers {db_cpu} ms")
            if received != sent:
                print(f"  MISMATCH: the sink received {received} but {sent} are marked sent")
        print(f"bench process peak RSS {rss_mb():.0f} MB")
        connection.close()
    finally:
        sink.terminate()
        if not args.keep:
            psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


if __name__ == "__main__":
    main()
