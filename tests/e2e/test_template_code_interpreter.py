"""Template ``code-interpreter-v1`` as a sandbox sees it, through the official SDK.

Builds the template (the machine's cache, so usually a no-op; a first build downloads from
Debian, PyPI and npm and takes minutes), then starts one real sandbox from it on a live
``shoal serve`` and checks, as ``user``: the kernelspecs, the Python stack, that every kernel
actually starts and evaluates code, the JS kernel's native zeromq, IRkernel, headless
matplotlib with a prebuilt font cache, and the copied interpreter server package.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from support.server import ShoalServer

from shoal.config import Settings
from shoal.template.builder import TemplateBuilder
from shoal.template.recipe import CODE_INTERPRETER, INTERPRETER_PATH, VENV
from shoal.template.store import Template, TemplateStore

pytestmark = [
    pytest.mark.root,
    pytest.mark.sdk,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(os.geteuid() != 0, reason="building templates and sandboxes need root"),
]

KERNELS = {"python3", "bash", "javascript", "typescript", "ir"}

# Starts each kernel with jupyter_client, as the interpreter server will, and evaluates one
# expression in it; prints {kernel: text of the result or stream output}.
_KERNEL_SMOKE = r"""
import json, sys
from jupyter_client.manager import start_new_kernel
code = {"python3": "6*7", "bash": "echo $((6*7))", "javascript": "6*7",
        "typescript": "const n: number = 6*7; n", "ir": "6*7"}
out = {}
for name in sys.argv[1:]:
    km, kc = start_new_kernel(kernel_name=name, startup_timeout=120)
    try:
        msg_id = kc.execute(code[name])
        text = []
        while True:
            msg = kc.get_iopub_msg(timeout=120)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                text.append(content["text"])
            elif kind in ("execute_result", "display_data"):
                text.append(content["data"].get("text/plain", ""))
            elif kind == "error":
                text.append("ERROR " + content["ename"] + ": " + content["evalue"])
            elif kind == "status" and content["execution_state"] == "idle":
                break
        out[name] = "".join(text)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
print(json.dumps(out))
"""

_PLOT = r"""
import matplotlib, matplotlib.pyplot as plt
fig, ax = plt.subplots()
ax.plot([1, 2, 3], [3, 1, 2])
ax.set_title("headless")
fig.savefig("/home/user/plot.png")
print(matplotlib.get_backend().lower())
"""


@pytest.fixture(scope="module")
def template() -> Template:
    settings = Settings.from_env()
    builder = TemplateBuilder(settings.templates_path, settings.uid_base)
    result = asyncio.run(builder.build(CODE_INTERPRETER))
    print(
        f"code-interpreter-v1: {'cached' if result.cached else 'built'} in "
        f"{result.seconds:.1f} s, {result.size_bytes / 1e6:.0f} MB"
    )
    return TemplateStore(settings.templates_path).resolve("code-interpreter-v1")


@pytest.fixture(scope="module")
def sbx(template: Template, e2e_server: ShoalServer) -> Iterator[Any]:
    from e2b import Sandbox

    sandbox = Sandbox.create(template="code-interpreter-v1", timeout=900)
    try:
        yield sandbox
    finally:
        sandbox.kill()


def run(sbx: Any, cmd: str, *, user: str = "user", timeout: float = 300) -> str:
    """stdout of ``cmd``; fails the test with both streams on a non-zero exit."""
    from e2b import CommandExitException

    try:
        result = sbx.commands.run(cmd, user=user, timeout=timeout)
    except CommandExitException as exc:
        pytest.fail(f"{cmd!r} exited {exc.exit_code}:\n{exc.stdout}\n{exc.stderr}")
    return str(result.stdout)


def test_template_carries_what_sandbox_start_up_needs(template: Template) -> None:
    assert template.ready_port == 49999
    assert template.start_cmd == CODE_INTERPRETER.start_cmd
    assert f"PYTHONPATH={INTERPRETER_PATH}" in template.start_cmd
    assert (template.cpu_count, template.memory_mb) == (2, 2048)
    assert (template.default_user, template.default_workdir) == ("user", "/home/user")
    assert set(template.kernels) == KERNELS
    assert template.env["PATH"].startswith(f"{VENV}/bin:")


def test_build_leaves_no_borrowed_network_or_caches(template: Template) -> None:
    root = template.rootfs
    assert (root / "etc/resolv.conf").read_text() == ""
    assert not (root / "tmp/.shoal-build-ca.crt").exists()
    assert not (root / "root/.cache").exists() and not (root / "root/.npm").exists()
    assert list((root / "tmp").iterdir()) == []


def test_kernelspecs_are_registered_system_wide(sbx: Any) -> None:
    specs = json.loads(run(sbx, "jupyter kernelspec list --json"))["kernelspecs"]
    assert KERNELS <= set(specs)
    for name in KERNELS:
        assert specs[name]["resource_dir"].startswith("/usr/local/share/jupyter/kernels/")
        # Kernels start the same whatever PATH the interpreter server was given.
        assert specs[name]["spec"]["argv"][0].startswith("/"), specs[name]["spec"]["argv"]
    assert specs["javascript"]["spec"]["language"] == "javascript"
    assert specs["typescript"]["spec"]["language"] == "typescript"
    assert specs["ir"]["spec"]["language"] == "R"


def test_python_stack_imports_as_user(sbx: Any) -> None:
    out = run(
        sbx,
        "python -c 'import numpy, pandas, matplotlib, scipy, PIL, e2b_charts, ipykernel, "
        "jupyter_client, orjson, starlette, uvicorn, httpx, bash_kernel, sys; "
        'print(sys.prefix, pandas.DataFrame({"a": [1, 2]}).a.sum())\'',
    )
    assert out.split() == [VENV, "3"]
    assert run(sbx, "whoami; pwd").split() == ["user", "/home/user"]


def test_user_can_pip_install_into_the_kernels_venv(sbx: Any) -> None:
    # pip install in a sandbox must reach the interpreter the kernels run.
    out = run(sbx, f"test -w {VENV}/lib/python3*/site-packages && python -m pip --version")
    assert VENV in out


def test_every_kernel_starts_and_evaluates(sbx: Any) -> None:
    sbx.files.write("/home/user/kernel_smoke.py", _KERNEL_SMOKE)
    out = run(sbx, "python kernel_smoke.py " + " ".join(sorted(KERNELS)), timeout=600)
    results = json.loads(out.strip().splitlines()[-1])
    assert set(results) == KERNELS
    for name, text in results.items():
        assert "42" in text, f"{name}: {text!r}"


def test_js_kernel_native_module_loads(sbx: Any) -> None:
    out = run(
        sbx,
        'node -e \'const z = require(require.resolve("zeromq", '
        '{paths: ["/usr/local/lib/node_modules/tslab"]})); '
        "console.log(typeof z.Dealer)' && tslab --version",
    )
    assert out.splitlines()[0] == "function"


def test_irkernel_loads(sbx: Any) -> None:
    out = run(sbx, 'R --quiet --no-save -e \'library(IRkernel); cat("ok", "\\n")\'')
    assert "ok" in out.split()


def test_matplotlib_is_headless_with_a_prebuilt_font_cache(sbx: Any) -> None:
    caches = run(sbx, "ls ~/.cache/matplotlib/").split()
    assert any(n.startswith("fontlist-") and n.endswith(".json") for n in caches), caches
    sbx.files.write("/home/user/plot.py", _PLOT)
    assert run(sbx, "python plot.py").strip() == "agg"
    png = sbx.files.read("/home/user/plot.png", format="bytes")
    assert bytes(png[:8]) == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_interpreter_server_package_is_importable(template: Template, sbx: Any) -> None:
    meta = json.loads((template.rootfs.parent / "template.json").read_text())
    if not meta["copied_packages"]["shoal.interpreter"]:
        pytest.fail("src/shoal/interpreter was missing when the template was built")
    out = run(
        sbx,
        f"PYTHONPATH={INTERPRETER_PATH} python -c "
        "'import shoal.interpreter.__main__ as m; print(m.__file__)'",
    )
    assert out.strip().startswith(f"{INTERPRETER_PATH}/shoal/interpreter/")
