// The npm @e2b/code-interpreter SDK against one sandbox of its default template
// (code-interpreter-v1): runCode state, results, streaming callbacks, errors, charts,
// JavaScript/TypeScript, the contexts API, env vars, timeoutMs. See lib.mjs for the output
// format; test_js_ci_sdk.py asserts on it.

import { Sandbox } from "@e2b/code-interpreter"
import { describeError, main, step } from "./lib.mjs"

const error = (e) => (e ? { name: e.name, value: e.value, traceback: e.traceback } : null)

/** What a user sees of an Execution. */
const seen = (ex) => ({
  text: ex.text ?? null,
  stdout: ex.logs.stdout,
  stderr: ex.logs.stderr,
  error: error(ex.error),
  executionCount: ex.executionCount ?? null,
  results: ex.results.map((r) => ({
    isMainResult: r.isMainResult,
    text: r.text ?? null,
    formats: r.formats(),
    extra: r.extra,
  })),
})

/** The outcome of a call that may throw: its value, or the SDK error's name and message. */
const outcome = (promise) =>
  promise.then(
    (value) => ({ ok: true, value: value ?? null }),
    (e) => ({ ok: false, ...describeError(e) }),
  )

await main(async (sandboxes) => {
  let sbx
  await step("create", async () => {
    sbx = await sandboxes.create(
      { metadata: { suite: "js-ci" }, envs: { FOO: "bar" }, timeoutMs: 300_000 },
      Sandbox,
    )
    const info = await sbx.getInfo()
    return { sandboxId: sbx.sandboxId, templateId: info.templateId }
  })
  if (!sbx) return

  await step("state", async () => {
    const first = await sbx.runCode("x = 41")
    const second = await sbx.runCode("x + 1")
    return { first: seen(first), second: seen(second) }
  })

  await step("text_result", async () => seen(await sbx.runCode("'a' + 'bc'")))

  // onStdout must see "first" while the code still runs: the code waits for a file that
  // only the callback writes, so a server that held output back would never finish.
  await step("callbacks", async () => {
    const stdout = []
    const stderr = []
    const results = []
    const ex = await sbx.runCode(
      "import os, sys, time\n" +
        "print('first', flush=True)\n" +
        "while not os.path.exists('/tmp/js-ci-go'):\n" +
        "    time.sleep(0.05)\n" +
        "print('warned', file=sys.stderr, flush=True)\n" +
        "print('second', flush=True)\n" +
        "'done'",
      {
        onStdout: async (m) => {
          stdout.push({ line: m.line, error: m.error })
          if (m.line === "first\n") await sbx.files.write("/tmp/js-ci-go", "go")
        },
        onStderr: (m) => stderr.push({ line: m.line, error: m.error }),
        onResult: (r) => results.push({ text: r.text, isMainResult: r.isMainResult }),
        timeoutMs: 30_000,
      },
    )
    return { stdout, stderr, results, execution: seen(ex) }
  })

  await step("error", async () => {
    const errors = []
    const ex = await sbx.runCode("def boom():\n    return 1 / 0\nboom()", {
      onError: (e) => errors.push(error(e)),
    })
    return { execution: seen(ex), onError: errors }
  })

  await step("chart", async () => {
    const ex = await sbx.runCode(
      "import matplotlib.pyplot as plt\n" +
        "plt.plot([1, 2, 3], [1, 4, 9], label='squares')\n" +
        "plt.title('growth')\n" +
        "plt.show()\n",
    )
    const charts = ex.results.filter((r) => r.png)
    return {
      error: error(ex.error),
      charts: charts.map((r) => ({
        isMainResult: r.isMainResult,
        pngHead: Buffer.from(r.png, "base64").subarray(0, 8).toString("hex"),
        chartType: r.chart?.type ?? null,
        chartTitle: r.chart?.title ?? null,
        elements: (r.chart?.elements ?? []).map((e) => ({ label: e.label, points: e.points })),
      })),
    }
  })

  await step("javascript", async () => {
    const js = await sbx.runCode(
      'console.log("hi from js"); [1, 2, 3].map((x) => x * 7).reduce((a, b) => a + b)',
      { language: "js" },
    )
    // "js" and "javascript" are one language: one default context, one state
    const set = await sbx.runCode("var jsKept = 20;", { language: "js" })
    const read = await sbx.runCode("jsKept + 22", { language: "javascript" })
    return { js: seen(js), set: seen(set), read: seen(read) }
  })

  await step("typescript", async () =>
    seen(
      await sbx.runCode(
        "function double(n: number): number { return n * 2 }\n" +
          "const answer: number = double(21)\n" +
          "console.log(`answer=${answer}`)\n" +
          "answer",
        { language: "typescript" },
      ),
    ),
  )

  await step("contexts", async () => {
    const ctx = await sbx.createCodeContext({ language: "python", cwd: "/tmp" })
    const cwd = seen(await sbx.runCode("import os; os.getcwd()", { context: ctx }))
    await sbx.runCode("only_here = 7", { context: ctx })
    const inContext = seen(await sbx.runCode("only_here", { context: ctx }))
    const inDefault = seen(await sbx.runCode("only_here"))
    const listed = await sbx.listCodeContexts()
    await sbx.restartCodeContext(ctx)
    const afterRestart = seen(await sbx.runCode("only_here", { context: ctx }))
    const cwdAfterRestart = seen(await sbx.runCode("import os; os.getcwd()", { context: ctx }))
    await sbx.removeCodeContext(ctx.id)
    const listedAfterRemove = await sbx.listCodeContexts()
    const js = await sbx.createCodeContext({ language: "js", cwd: "/tmp" })
    const jsCwd = seen(await sbx.runCode("process.cwd()", { context: js }))
    await sbx.removeCodeContext(js)
    return {
      ctx,
      cwd,
      inContext,
      inDefault,
      listed,
      afterRestart,
      cwdAfterRestart,
      listedAfterRemove,
      js,
      jsCwd,
      runRemoved: await outcome(sbx.runCode("1", { context: ctx })),
      restartRemoved: await outcome(sbx.restartCodeContext(ctx.id)),
      removeRemoved: await outcome(sbx.removeCodeContext(ctx)),
    }
  })

  await step("envs", async () => {
    const py = "import os; print(os.getenv('FOO'), os.getenv('ONLY_NOW', 'unset'))"
    const js = "console.log(process.env.FOO, process.env.ONLY_NOW ?? 'unset')"
    const over = { FOO: "override", ONLY_NOW: "yes" }
    const run = async (code, opts) => (await sbx.runCode(code, opts)).logs.stdout.join("")
    return {
      python: [await run(py), await run(py, { envs: over }), await run(py)],
      javascript: [
        await run(js, { language: "javascript" }),
        await run(js, { language: "javascript", envs: over }),
        await run(js, { language: "javascript" }),
      ],
    }
  })

  await step("bad_arguments", async () => {
    const ctx = (await sbx.listCodeContexts()).find((c) => c.language === "python")
    return {
      contextAndLanguage: await outcome(sbx.runCode("1", { context: ctx, language: "python" })),
      unknownLanguage: await outcome(sbx.runCode("DISPLAY 'HI'.", { language: "cobol" })),
      unknownContext: await outcome(
        sbx.runCode("1", { context: { id: "no-such-context", language: "python", cwd: "/" } }),
      ),
    }
  })

  // timeoutMs ends the call; the server interrupts the kernel, so the next call in the same
  // context answers (within its own timeoutMs) with the state kept.
  await step("timeout", async () => {
    await sbx.runCode("survivor = 'still here'")
    const loop = await outcome(sbx.runCode("while True:\n    pass", { timeoutMs: 2_000 }))
    const next = seen(await sbx.runCode("survivor", { timeoutMs: 20_000 }))
    return { loop, next }
  })
})

// runCode and the contexts calls leave their request timer (requestTimeoutMs, 60 s) pending
// when the server answers with an error status, which would keep node alive that long.
// stdout is a pipe here, written synchronously, so nothing printed is lost.
process.exit(0)
