"""Shared pieces of the multi-host tests on scripts/netns-cluster.sh's hosts: a process on
a host, and a secured cluster as the README's "Deploying on several hosts" describes it
(coordinator on h1 with TLS for the host name h1, Engram memory nodes on h2 and h3 with a
token, an engine of 2 attention ranks on h4 and 2 expert ranks on h5, over TCP).
"""
import os
import re
import signal
import subprocess
import sys
import threading
import time

STATE = os.environ.get("DSV4_NETNS_STATE", "/run/dsv4-netns")


def require_hosts(count):
    """Exits 77 (CTest's skip) unless hosts h1..h<count> are up."""
    if not os.path.exists(os.path.join(STATE, f"h{count}.uts")):
        print(f"skipped: the namespace cluster (h1..h{count}) is not up")
        sys.exit(77)


class Process:
    """A command on a namespace host; its output is drained, timestamped and kept."""

    def __init__(self, rsh, host, args, name):
        self.lines = []  # (monotonic time, line)
        self.name = name
        self.popen = subprocess.Popen([rsh, host, " ".join(args)], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.popen.stdout:
            self.lines.append((time.monotonic(), line))

    def first(self, pattern, after=0.0):
        """The time of the first line matching `pattern` logged after `after`, or None."""
        for t, line in list(self.lines):
            if t >= after and re.search(pattern, line):
                return t
        return None

    def wait_for(self, pattern, timeout, after=0.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t = self.first(pattern, after)
            if t is not None:
                return t
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: no '{pattern}' within {timeout} s in:\n" + self.tail())

    def tail(self, n=40):
        return "".join(line for _, line in self.lines[-n:])

    def stop(self):
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)


def write(path, text, mode=0o600):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def link(host, up):
    """Takes host's link to the bridge down or up (the host stays, unreachable)."""
    subprocess.run(["ip", "link", "set", f"veth-{host}", "up" if up else "down"], check=True)


def cut(a, b, cut=True):
    """Cuts (or restores) the path between hosts a and b only: a blackhole route each way,
    so both keep reaching every other host."""
    address = {f"h{i}": f"10.77.0.{10 + i}/32" for i in range(1, 10)}
    for src, dst in ((a, b), (b, a)):
        subprocess.run(["ip", "-n", src, "route", "add" if cut else "del", "blackhole",
                        address[dst]], check=True)


class Cluster:
    """The secured five-host cluster in directory `tmp`. start() brings up the memory nodes
    and the coordinator; in launch mode the coordinator starts the engine itself."""

    def __init__(self, bin_dir, source_dir, tmp, engines="launch", heartbeat_ms=1000,
                 max_step_seconds=300):
        self.bin, self.src, self.tmp = bin_dir, source_dir, tmp
        self.rsh = os.path.join(source_dir, "scripts", "netns-rsh")
        self.mpirun_args = (
            "--oversubscribe --mca plm_rsh_agent " + self.rsh + " --mca btl tcp,self "
            "--mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24")
        self.engines = engines
        self.heartbeat_ms = heartbeat_ms
        self.max_step_seconds = max_step_seconds
        self.processes = []
        self.checkpoint = os.path.join(tmp, "v41-tiny")
        self.cluster = os.path.join(tmp, "cluster.yaml")
        self.memory_nodes = []

    def prepare(self):
        t = self.tmp
        subprocess.run([os.path.join(self.bin, "dsv4"), "checkpoint", "generate", "--preset",
                        "v41-tiny", "--seed", "7", "--out", self.checkpoint], check=True,
                       timeout=120, stdout=subprocess.DEVNULL)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=h1", "-addext", "subjectAltName=DNS:h1",
                        "-keyout", os.path.join(t, "coord.key"),
                        "-out", os.path.join(t, "coord.pem")],
                       check=True, timeout=60, capture_output=True)
        for name in ("engram.token", "engine.token", "admin.token"):
            write(os.path.join(t, name), os.urandom(16).hex() + "\n")
        links = "".join(
            f"    {c}: {{bandwidth_GBps: 10, latency_us: 50, source: \"netns bridge\"}}\n"
            for c in ("intra_node", "intra_supernode", "inter_supernode"))
        write(self.cluster, f"""name: netns
hardware: {self.src}/cluster-configs/hardware/ascend-950dt.yaml
topology:
  supernodes: 1
  nodes_per_supernode: 2
  chips_per_node: 2
  hosts: [h4, h5]
  links:
{links}roles:
  attention_ranks: 2
  expert_ranks: 2
engine:
  max_seqs_per_rank: 8
  max_seq_len: 1024
  kv_budget_tokens: 8192
  chunked_prefill_tokens: 256
  max_step_seconds: {self.max_step_seconds}
engram:
  servers: ["h2:50061", "h3:50061"]
  replication: 2
  token_file: {t}/engram.token
coordinator:
  listen: "0.0.0.0:50051"
  engine_listen: "0.0.0.0:50053"
  admin_listen: "127.0.0.1:50052"
  tls: {{cert: {t}/coord.pem, key: {t}/coord.key}}
  engine_token_file: {t}/engine.token
  admin_token_file: {t}/admin.token
  max_restarts: 10                   # every fault test restarts the engine once or twice
""", mode=0o644)

    def start(self):
        self.prepare()
        for index, host in enumerate(("h2", "h3")):
            self.memory_nodes.append(Process(
                self.rsh, host, [os.path.join(self.bin, "dsv4-engram-store"), "--checkpoint",
                                 self.checkpoint, "--cluster", self.cluster, "--index",
                                 str(index)], f"memory node {host}"))
        self.processes += self.memory_nodes
        for node in self.memory_nodes:
            node.wait_for("listening on", 60)
        args = [os.path.join(self.bin, "dsv4-coordinator"), "--cluster", self.cluster,
                "--checkpoint", self.checkpoint, "--engines", self.engines,
                "--heartbeat_ms", str(self.heartbeat_ms), "--metrics-listen", "off"]
        if self.engines == "launch":
            args += ["--advertise", "h1:50053", f"--mpirun-args='{self.mpirun_args}'"]
        self.coordinator = Process(self.rsh, "h1", args, "coordinator on h1")
        self.processes.insert(0, self.coordinator)  # stopped first: it stops the engine
        self.coordinator.wait_for("listening on", 60)

    def attach_engine(self):
        """Starts the engine as an operator would in attach mode: mpirun from h1 with a
        hostfile, dialling the coordinator by name."""
        hostfile = os.path.join(self.tmp, "hostfile")
        write(hostfile, "h4 slots=2\nh5 slots=2\n", mode=0o644)
        engine = Process(self.rsh, "h1", [
            "mpirun", self.mpirun_args, "--hostfile", hostfile, "-np", "4",
            os.path.join(self.bin, "dsv4-engine"), "--cluster", self.cluster, "--checkpoint",
            self.checkpoint, "--coordinator", "h1:50053", "--engine-id", "engine-0",
            "--engine-token-file", os.path.join(self.tmp, "engine.token")], "attached engine")
        self.processes.insert(1, engine)
        return engine

    def start_slurm(self):
        """slurmctld on h1, slurmd on h4 and h5 (auth/none: the hosts are this machine's).
        The hosts share /tmp, so each gets its own PMIx client directory (mpi.conf)."""
        base = os.path.join(self.tmp, "slurm")
        conf = f"""ClusterName=netns
SlurmctldHost=h1(10.77.0.11)
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool/%n
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.%n.pid
SlurmctldLogFile={base}/slurmctld.log
SlurmdLogFile={base}/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
NodeName=h4 NodeAddr=10.77.0.14 CPUs=2 State=UNKNOWN
NodeName=h5 NodeAddr=10.77.0.15 CPUs=2 State=UNKNOWN
PartitionName=netns Nodes=h4,h5 Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
"""
        self.slurm_conf = {}
        for host in ("h1", "h4", "h5"):
            etc = os.path.join(base, "etc-" + host)
            os.makedirs(os.path.join(base, "pmix-" + host))
            os.makedirs(etc)
            write(os.path.join(etc, "slurm.conf"), conf, mode=0o644)
            write(os.path.join(etc, "mpi.conf"), f"PMIxCliTmpDirBase={base}/pmix-{host}\n",
                  mode=0o644)
            self.slurm_conf[host] = os.path.join(etc, "slurm.conf")
        os.makedirs(os.path.join(base, "state"))
        ctld = Process(self.rsh, "h1", [f"SLURM_CONF={self.slurm_conf['h1']}", "slurmctld",
                                        "-D"], "slurmctld on h1")
        self.processes.append(ctld)
        time.sleep(1)
        for host in ("h4", "h5"):
            os.makedirs(os.path.join(base, "spool", host))
            self.processes.append(Process(
                self.rsh, host, [f"SLURM_CONF={self.slurm_conf[host]}", "slurmd", "-D", "-N",
                                 host], f"slurmd on {host}"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            sinfo = subprocess.run([self.rsh, "h1", f"SLURM_CONF={self.slurm_conf['h1']} "
                                    "sinfo -h -o %T -N"], capture_output=True, text=True)
            if sinfo.stdout.split() == ["idle", "idle"]:
                return
            time.sleep(0.5)
        raise RuntimeError("slurm nodes not idle: " + sinfo.stdout + sinfo.stderr)

    def srun_engine(self):
        """The engine under Slurm as the README shows it: srun --mpi=pmix from h1, two nodes
        of two tasks, attached to the coordinator by name (TCP only between the hosts)."""
        engine = Process(self.rsh, "h1", [
            f"SLURM_CONF={self.slurm_conf['h1']}", "OMPI_MCA_btl=tcp,self",
            "OMPI_MCA_btl_tcp_if_include=10.77.0.0/24", "OMPI_MCA_oob_tcp_if_include=10.77.0.0/24",
            "srun", "--mpi=pmix", "-N", "2", "--ntasks-per-node", "2",
            os.path.join(self.bin, "dsv4-engine"), "--cluster", self.cluster, "--checkpoint",
            self.checkpoint, "--coordinator", "h1:50053", "--engine-id", "engine-0",
            "--engine-token-file", os.path.join(self.tmp, "engine.token")], "srun engine")
        self.processes.insert(1, engine)
        return engine

    def channel(self):
        import grpc
        with open(os.path.join(self.tmp, "coord.pem"), "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        channel = grpc.secure_channel("h1:50051", credentials)
        grpc.channel_ready_future(channel).result(timeout=30)
        return channel

    def stop(self):
        for process in self.processes:
            process.stop()


def greedy_reference(bin_dir, checkpoint, prompt, tokens):
    """`dsv4 run`'s greedy tokens for `prompt`, one process on this host."""
    run = subprocess.run([os.path.join(bin_dir, "dsv4"), "run", "--checkpoint", checkpoint,
                          "--prompt", prompt, "--generate", str(tokens), "--temperature", "0"],
                         check=True, timeout=300, capture_output=True, text=True)
    return [int(x) for x in re.search(r"generated: ([\d,]+)", run.stdout).group(1).split(",")]
