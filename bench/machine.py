"""The machine and commit a benchmark ran on, for the JSON in bench/results/."""
import os
import subprocess


def machine_json():
    return {
        "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                           if l.startswith("model name")), "unknown"),
        "logical_cores": os.cpu_count(),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                 text=True).stdout.strip(),
    }
