#!/usr/bin/env python3
"""An independent client: Python grpcio with stubs generated here from proto/ by Debian's
grpc_tools, against a real sherld. It checks health, submits a job (typed spec, data uploaded
with UploadFile), watches it to SUCCEEDED, lists, cancels a queued job, and checks error codes —
proving the contract works for clients we did not write.

  python_client.py SHERLD PROTO_DIR MODEL_DIR WORK_DIR"""
import hashlib
import os
import shutil
import sys

import grpc
from grpc_tools import protoc

sherld, proto_dir, model_dir, work = sys.argv[1:5]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(os.path.join(work, "gen"))
for p in ("sherl/v1/sherl.proto", "grpc/health/v1/health.proto"):
    rc = protoc.main(["protoc", "-I", proto_dir, "--python_out=" + os.path.join(work, "gen"),
                      "--grpc_python_out=" + os.path.join(work, "gen"), os.path.join(proto_dir, p)])
    if rc:
        sys.exit("protoc failed on %s" % p)
sys.path.insert(0, os.path.join(work, "gen"))
from sherl.v1 import sherl_pb2, sherl_pb2_grpc  # noqa: E402


def load_generated(name, rel):
    """The generated health modules live under gen/grpc/..., which the installed grpc package
    shadows: load them by path (the _grpc module imports the _pb2 one by its package name)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, os.path.join(work, "gen", rel))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


import types  # noqa: E402
for pkg in ("grpc.health", "grpc.health.v1"):
    sys.modules.setdefault(pkg, types.ModuleType(pkg))
health_pb2 = load_generated("grpc.health.v1.health_pb2", "grpc/health/v1/health_pb2.py")
sys.modules["grpc.health.v1"].health_pb2 = health_pb2
health_pb2_grpc = load_generated("grpc.health.v1.health_pb2_grpc",
                                 "grpc/health/v1/health_pb2_grpc.py")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sherld_harness import Daemon, check, failures  # noqa: E402
from wordnet_data import write_split  # noqa: E402

data = os.path.join(work, "data")
os.makedirs(data)
write_split(data, 16, 8)
d = Daemon(sherld, None, work, os.path.join(work, "state"), (os.path.dirname(model_dir), data))
addr = d.addr
ch = grpc.insecure_channel(addr)
grpc.channel_ready_future(ch).result(timeout=30)
stub = sherl_pb2_grpc.SherlStub(ch)
health = health_pb2_grpc.HealthStub(ch)
try:
    r = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    check(r.status == health_pb2.HealthCheckResponse.SERVING, "health: %s" % r)
    r = health.Check(health_pb2.HealthCheckRequest(service="sherl.v1.Sherl"), timeout=10)
    check(r.status == health_pb2.HealthCheckResponse.SERVING, "health sherl.v1.Sherl: %s" % r)

    def upload(path):
        content = open(path, "rb").read()
        digest = hashlib.sha256(content).hexdigest()

        def chunks():
            half = len(content) // 2
            yield sherl_pb2.UploadChunk(name=os.path.basename(path), size=len(content),
                                        data=content[:half])
            yield sherl_pb2.UploadChunk(data=content[half:], sha256=digest)
        info = stub.UploadFile(chunks(), timeout=30)
        check(info.ref == "sha256:" + digest and info.size == len(content), "upload: %s" % info)
        return info.ref

    train_ref = upload(os.path.join(data, "train.jsonl"))
    val_ref = upload(os.path.join(data, "val.jsonl"))
    try:  # a wrong digest is refused
        stub.UploadFile(iter([sherl_pb2.UploadChunk(name="x.jsonl", size=3, data=b"abc",
                                                     sha256="0" * 64)]), timeout=30)
        check(False, "a wrong sha256 was accepted")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and "sha256" in e.details(),
              "wrong sha256: %s %s" % (e.code(), e.details()))

    spec = sherl_pb2.JobSpec(
        name="from-python", backbone=model_dir, method="sherl",
        sherl=sherl_pb2.SherlOptions(late_layers=1, downsample_factor=2),
        data=sherl_pb2.DataSpec(train=train_ref, validation=val_ref, max_length=32),
        train=sherl_pb2.TrainSpec(epochs=4, batch_size=8, log_every=1, seed=5),
        resources=sherl_pb2.ResourceSpec(threads=1))
    est = stub.EstimateJob(sherl_pb2.EstimateJobRequest(spec=spec), timeout=60)
    check(est.fits_ever and est.plan.peak_bytes > est.plan.backbone_bytes > 0, "estimate: %s" % est)
    job = stub.SubmitJob(sherl_pb2.SubmitJobRequest(spec=spec), timeout=60)
    # the scheduler may already have picked it up by the time the reply is built
    check(job.state in (sherl_pb2.QUEUED, sherl_pb2.LOADING, sherl_pb2.RUNNING) and
          job.id.startswith("j-"), "submit: %s" % job)
    # a second job waits in QUEUED behind the first (one job at a time; the first runs 24
    # steps, seconds, while this takes milliseconds): cancel it there
    job2 = stub.SubmitJob(sherl_pb2.SubmitJobRequest(spec=spec), timeout=60)
    c = stub.CancelJob(sherl_pb2.CancelJobRequest(id=job2.id), timeout=30)
    check(c.state == sherl_pb2.CANCELLED, "cancel queued: %s" % sherl_pb2.JobState.Name(c.state))
    # priority: behind the running job, a later job of higher priority runs before an earlier one
    short = sherl_pb2.JobSpec()
    short.CopyFrom(spec)
    short.train.epochs = 1
    low = stub.SubmitJob(sherl_pb2.SubmitJobRequest(spec=short, priority=0), timeout=60)
    high = stub.SubmitJob(sherl_pb2.SubmitJobRequest(spec=short, priority=5), timeout=60)
    states, steps = [], []
    for ev in stub.WatchJob(sherl_pb2.WatchJobRequest(id=job.id), timeout=300):
        kind = ev.WhichOneof("kind")
        if kind == "state":
            states.append(sherl_pb2.JobState.Name(ev.state))
        elif kind == "progress":
            steps.append(ev.progress.step)
    check(states == ["QUEUED", "LOADING", "RUNNING", "SUCCEEDED"], "states: %s" % states)
    check(steps == sorted(steps) and steps and steps[-1] == 24, "progress steps: %s" % steps)
    for j in (low, high):
        for _ in stub.WatchJob(sherl_pb2.WatchJobRequest(id=j.id), timeout=300):
            pass
    lo = stub.GetJob(sherl_pb2.GetJobRequest(id=low.id), timeout=30)
    hi = stub.GetJob(sherl_pb2.GetJobRequest(id=high.id), timeout=30)
    check(lo.state == hi.state == sherl_pb2.SUCCEEDED and hi.started_ms <= lo.started_ms,
          "priority: high started %d, low %d" % (hi.started_ms, lo.started_ms))
    got = stub.GetJob(sherl_pb2.GetJobRequest(id=job.id), timeout=30)
    check(got.state == sherl_pb2.SUCCEEDED and got.evals and got.evals[0].accuracy > 0,
          "get: %s" % got.state)
    seen, token = [], ""
    while True:  # pages of 2 over the 4 jobs, newest first
        page = stub.ListJobs(sherl_pb2.ListJobsRequest(page_size=2, page_token=token), timeout=30)
        seen += [j.id for j in page.jobs]
        token = page.next_page_token
        if not token:
            break
    check(seen == [high.id, low.id, job2.id, job.id], "list pages: %s" % seen)
    done = stub.ListJobs(sherl_pb2.ListJobsRequest(states=[sherl_pb2.CANCELLED]), timeout=30)
    check([j.id for j in done.jobs] == [job2.id], "list CANCELLED: %s" % [j.id for j in done.jobs])
    for call, req, code in [
        (stub.GetJob, sherl_pb2.GetJobRequest(id="j-0000000000000000"), grpc.StatusCode.NOT_FOUND),
        (stub.CancelJob, sherl_pb2.CancelJobRequest(id=job.id), grpc.StatusCode.FAILED_PRECONDITION),
        (stub.SubmitJob, sherl_pb2.SubmitJobRequest(spec_json='{"backbone": 3}'),
         grpc.StatusCode.INVALID_ARGUMENT),
        (stub.SubmitJob, sherl_pb2.SubmitJobRequest(spec_json='{"name": "x", "backbone": '),
         grpc.StatusCode.INVALID_ARGUMENT),
        (stub.SubmitJob, sherl_pb2.SubmitJobRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        (stub.ListJobs, sherl_pb2.ListJobsRequest(page_size=5000), grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        try:
            call(req, timeout=30)
            check(False, "%s succeeded" % req)
        except grpc.RpcError as e:
            check(e.code() == code, "%s: %s %s (expected %s)" % (type(req).__name__, e.code(),
                                                                 e.details(), code))
    # devices and backbones by (folder, device, precision), with the fields this client sees
    node = stub.GetNodeStatus(sherl_pb2.GetNodeStatusRequest(), timeout=30)
    check(node.devices and node.devices[0].name == "cpu" and node.devices[0].budget_bytes ==
          node.memory_budget_bytes and node.devices[0].total_bytes >= node.devices[0].free_bytes > 0,
          "node devices: %s" % node.devices)
    bb = stub.LoadBackbone(sherl_pb2.LoadBackboneRequest(path=model_dir, precision="bf16"),
                           timeout=120)
    check(bb.loaded and bb.device == "cpu" and bb.precision == "bf16" and bb.bytes > 0,
          "LoadBackbone bf16: %s" % bb)
    node = stub.GetNodeStatus(sherl_pb2.GetNodeStatusRequest(), timeout=30)
    check([(u.precision, u.bytes) for u in node.devices[0].backbones] == [("bf16", bb.bytes)] and
          node.devices[0].planned_bytes == bb.bytes, "node backbones: %s" % node.devices[0])
    for req, code in [(sherl_pb2.LoadBackboneRequest(path=model_dir, device="cuda"),
                       grpc.StatusCode.FAILED_PRECONDITION),
                      (sherl_pb2.LoadBackboneRequest(path=model_dir, precision="int8"),
                       grpc.StatusCode.INVALID_ARGUMENT)]:
        try:
            stub.LoadBackbone(req, timeout=30)
            check(False, "%s succeeded" % req)
        except grpc.RpcError as e:
            check(e.code() == code, "%s: %s %s" % (req, e.code(), e.details()))
    un = stub.UnloadBackbone(sherl_pb2.UnloadBackboneRequest(name=bb.name, device="cpu",
                                                             precision="bf16"), timeout=30)
    check(not un.loaded and un.precision == "bf16", "UnloadBackbone: %s" % un)
    est = stub.EstimateJob(sherl_pb2.EstimateJobRequest(spec=spec), timeout=60)
    check(est.device == "cpu" and est.device_bytes + est.host_bytes == est.plan.peak_bytes,
          "estimate by device: %s %d %d" % (est.device, est.device_bytes, est.host_bytes))
    # garbage for every method: an error status, never a crash or a hang
    import random  # noqa: E402
    rng = random.Random(11)
    unary = ["SubmitJob", "EstimateJob", "GetJob", "ListJobs", "CancelJob", "LoadBackbone",
             "ListBackbones", "UnloadBackbone", "Predict", "GetNodeStatus"]
    odd = 0
    for i in range(200):
        name = rng.choice(unary + ["WatchJob", "DownloadArtifact", "UploadFile"])
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
        ident = lambda b: b  # noqa: E731  raw bytes in and out
        try:
            if name in ("WatchJob", "DownloadArtifact"):
                call = ch.unary_stream("/sherl.v1.Sherl/" + name, ident, ident)
                for _ in call(blob, timeout=10):
                    pass
            elif name == "UploadFile":
                call = ch.stream_unary("/sherl.v1.Sherl/" + name, ident, ident)
                call(iter([blob, blob]), timeout=10)
            else:
                ch.unary_unary("/sherl.v1.Sherl/" + name, ident, ident)(blob, timeout=10)
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
                            grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                odd += 1
                print("garbage to %s: %s %s" % (name, e.code(), e.details()))
    check(odd == 0, "%d garbage requests got a crash-like status" % odd)
    r = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    check(r.status == health_pb2.HealthCheckResponse.SERVING, "alive after garbage: %s" % r)
    print("python grpcio %s client: health SERVING, 2 uploads, estimate, submit, cancel a queued "
          "job, run by priority, watch %s, list with paging and a state filter, 6 error codes, 200 garbage requests answered" %
          (grpc.__version__, " -> ".join(states)))
finally:
    check(d.term() == 0, "sherld exit code")
sys.exit(1 if failures else 0)
