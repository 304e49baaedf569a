"""The load generator: thousands of simulated IKEv1 peers against any gateway.

Each simulated peer is one ISAKMP SA (Main Mode, then Quick Modes) from its own address
(loopback, or a range made local and routed to the gateway), on a schedule (open loop: a rate; closed loop: a concurrency), with optional
fault injection; the report gives SAs per second, latency percentiles and failures by
reason. ``ikecore loadtest`` is the command; a program can run the same pieces:

* ``generator``: ``LoadSpec`` (what to run), ``Faults``, and the sans-IO ``LoadTest``;
* ``runners``: ``run_in_memory`` (against an ``Engine``, fake clock), ``run_udp`` (real
  datagrams, one socket) and ``run_processes`` (several generator processes);
* ``report``: ``Report`` and its text and JSON forms; ``progress``: the progress bar;
* ``shares``: a distributed run's shares and the merge of its workers' reports;
  ``distributed``: ``--master``/``--worker`` on Locust's runners (imported only by those
  commands: importing Locust monkey-patches the process with gevent); ``worker_process``:
  a worker's generator, forked before that;
* ``cli``: the command's flags and the command itself.
"""

from ikecore.loadtest.generator import Faults, LoadSpec, LoadTest, PeerState, peer_address
from ikecore.loadtest.progress import ProgressBar
from ikecore.loadtest.report import Report, format_report, report_json
from ikecore.loadtest.runners import run_in_memory, run_processes, run_udp

__all__ = ["Faults", "LoadSpec", "LoadTest", "PeerState", "ProgressBar", "Report", "format_report",
           "peer_address", "report_json", "run_in_memory", "run_processes", "run_udp"]
