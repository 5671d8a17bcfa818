import subprocess
import sys


def test_demo_runs_and_reports_backends():
    out = subprocess.run([sys.executable, "-m", "aot_kernels", "demo", "--repeat", "1"],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    assert "M=126" in out and "N=70" in out and "D=1152" in out
    assert "cpp" in out and "torch" in out and "agree" in out


def test_cli_rejects_bad_arguments():
    bad = subprocess.run([sys.executable, "-m", "aot_kernels", "demo", "--repeat", "0"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--repeat" in bad.stderr
