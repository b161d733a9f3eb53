"""The official ``e2b-code-interpreter`` SDK with the template's other languages (e2b-compat.md
§5.4-§5.5): JavaScript, TypeScript, R and bash kernels, their contexts and env vars."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ci(shoal_server, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """One code-interpreter sandbox with a sandbox-level env var, shared by the module."""
    from e2b_code_interpreter import Sandbox

    sbx = Sandbox.create(
        envs={"FOO": "bar"}, timeout=600, metadata={"test": request.module.__name__[-60:]}
    )
    yield sbx
    try:
        sbx.kill()
    except Exception:
        pass


def _stdout(execution) -> str:  # type: ignore[no-untyped-def]
    assert execution.error is None, execution.error
    return "".join(execution.logs.stdout)


def test_default_contexts_include_python_and_javascript(ci) -> None:  # type: ignore[no-untyped-def]
    listed = ci.list_code_contexts()
    languages = [c.language for c in listed]
    assert "python" in languages
    assert "javascript" in languages
    assert all(c.cwd == "/home/user" for c in listed if c.language in ("python", "javascript"))


def test_the_default_javascript_kernel_starts_at_its_first_use(shoal_server) -> None:  # type: ignore[no-untyped-def]
    """Listed from the start, but no JS kernel (~100 MiB) runs until JavaScript is run."""
    from e2b_code_interpreter import Sandbox

    sbx = Sandbox.create(envs={"WHO": "lazy"}, timeout=120)
    try:
        count = "pgrep -fc '[t]slab kernel' || true"
        assert "javascript" in [c.language for c in sbx.list_code_contexts()]
        assert sbx.run_code("1 + 1").text == "2"
        assert sbx.commands.run(count).stdout == "0\n"
        execution = sbx.run_code("process.env.WHO + (40 + 2)", language="javascript")
        assert execution.error is None and execution.text == "lazy42"
        assert sbx.commands.run(count).stdout == "1\n"
        js = [c for c in sbx.list_code_contexts() if c.language == "javascript"]
        assert len(js) == 1  # the default one, now started; no second context
    finally:
        sbx.kill()


def test_javascript_console_log(ci) -> None:  # type: ignore[no-untyped-def]
    execution = ci.run_code('console.log("Hello, " + "World!")', language="javascript")
    assert _stdout(execution) == "Hello, World!\n"


@pytest.mark.parametrize("language", ["js", "typescript"])
def test_expression_result(ci, language: str) -> None:  # type: ignore[no-untyped-def]
    execution = ci.run_code(
        'console.log("before");\n[1, 2, 3].map(x => x * 7).reduce((a, b) => a + b)',
        language=language,
    )
    assert _stdout(execution) == "before\n"  # the value is a result, not printed output
    assert execution.text == "42"
    assert [r.is_main_result for r in execution.results] == [True]
    assert execution.results[0].extra == {}


def test_javascript_state_is_kept(ci) -> None:  # type: ignore[no-untyped-def]
    assert ci.run_code("var keptJs = 20;", language="javascript").error is None
    assert ci.run_code("keptJs + 22", language="javascript").text == "42"


def test_javascript_top_level_await(ci) -> None:  # type: ignore[no-untyped-def]
    execution = ci.run_code(
        "const waited = await new Promise(resolve => setTimeout(() => resolve('done'), 50));\n"
        "console.log(waited);",
        language="javascript",
    )
    assert _stdout(execution) == "done\n"


def test_javascript_esm_import_of_a_builtin(ci) -> None:  # type: ignore[no-untyped-def]
    execution = ci.run_code(
        'import { basename } from "node:path";\nconsole.log(basename("/a/b/file.txt"));',
        language="javascript",
    )
    assert _stdout(execution) == "file.txt\n"


def test_javascript_error(ci) -> None:  # type: ignore[no-untyped-def]
    execution = ci.run_code('throw new Error("x marks the spot")', language="javascript")
    assert execution.error is not None
    assert execution.error.name == "Error"
    assert execution.error.value == "x marks the spot"
    assert "x marks the spot" in execution.error.traceback
    assert execution.logs.stderr == []
    # a thrown TypeError keeps its name, and the kernel keeps working afterwards
    typed = ci.run_code('JSON.parse("null").property', language="javascript")
    assert typed.error is not None and typed.error.name == "TypeError"
    assert _stdout(ci.run_code('console.log("still here")', language="javascript")) == (
        "still here\n")


def test_typescript_typed_expression(ci) -> None:  # type: ignore[no-untyped-def]
    execution = ci.run_code(
        "function double(n: number): number { return n * 2; }\n"
        "const answer: number = double(21);\n"
        "console.log(`answer=${answer}`);\n"
        "answer",
        language="typescript",
    )
    assert _stdout(execution) == "answer=42\n"
    assert execution.text == "42"


def test_typescript_type_error_is_a_named_error(ci) -> None:  # type: ignore[no-untyped-def]
    execution = ci.run_code("const n: number = 'not a number';", language="typescript")
    assert execution.error is not None
    assert execution.error.name == "TSError"
    assert "is not assignable to type 'number'" in execution.error.value


def test_r_hello_world(ci) -> None:  # type: ignore[no-untyped-def]
    execution = ci.run_code('print("Hello, World!")', language="r")
    assert execution.error is None
    shown = _stdout(execution) + "".join(r.text or "" for r in execution.results)
    assert shown.strip() == '[1] "Hello, World!"'


def test_bash_echo(ci) -> None:  # type: ignore[no-untyped-def]
    assert _stdout(ci.run_code("echo from-bash-$((40 + 2))", language="bash")) == "from-bash-42\n"


_PWD = {"javascript": "console.log(process.cwd())", "typescript": "console.log(process.cwd())",
        "r": "cat(getwd(), '\\n', sep='')", "bash": "pwd"}


@pytest.mark.parametrize("language", ["javascript", "typescript", "r", "bash"])
def test_context_with_cwd(ci, language: str) -> None:  # type: ignore[no-untyped-def]
    ctx = ci.create_code_context(language=language, cwd="/tmp")
    try:
        assert ctx.language == language
        assert ctx.cwd == "/tmp"
        assert ctx.id in [c.id for c in ci.list_code_contexts()]
        assert _stdout(ci.run_code(_PWD[language], context=ctx)) == "/tmp\n"
    finally:
        ci.remove_code_context(ctx)
    assert ctx.id not in [c.id for c in ci.list_code_contexts()]


_SHOW_ENV = {
    "javascript": "console.log(`${process.env.FOO}|${process.env.ONLY_NOW ?? 'unset'}`)",
    "r": "cat(Sys.getenv('FOO'), '|', Sys.getenv('ONLY_NOW', 'unset'), '\\n', sep='')",
    "bash": 'echo "$FOO|${ONLY_NOW:-unset}"',
}


@pytest.mark.parametrize("language", sorted(_SHOW_ENV))
def test_sandbox_and_execution_env_vars(ci, language: str) -> None:  # type: ignore[no-untyped-def]
    code = _SHOW_ENV[language]
    assert _stdout(ci.run_code(code, language=language)) == "bar|unset\n"
    during = ci.run_code(code, language=language, envs={"FOO": "override", "ONLY_NOW": "yes"})
    assert _stdout(during) == "override|yes\n"
    assert _stdout(ci.run_code(code, language=language)) == "bar|unset\n"


def test_javascript_execution_env_vars_are_reset_after_an_error(ci) -> None:  # type: ignore[no-untyped-def]
    failed = ci.run_code('throw new Error(process.env.ONLY_NOW)', language="javascript",
                         envs={"ONLY_NOW": "boom"})
    assert failed.error is not None and failed.error.value == "boom"
    code = _SHOW_ENV["javascript"]
    assert _stdout(ci.run_code(code, language="javascript")) == "bar|unset\n"


def test_unknown_language_is_an_sdk_error(ci) -> None:  # type: ignore[no-untyped-def]
    from e2b import SandboxException

    with pytest.raises(SandboxException, match="cobol"):
        ci.run_code("DISPLAY 'HI'.", language="cobol")
    with pytest.raises(SandboxException, match="cobol"):
        ci.create_code_context(language="cobol")
    # the server and the other kernels keep working
    assert ci.run_code("6 * 7").text == "42"
    assert ci.run_code("6 * 7", language="javascript").text == "42"
