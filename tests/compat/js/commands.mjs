// commands.* of the npm e2b SDK against one sandbox: output, exit codes, env, cwd, users,
// background commands, list/kill/connect, stdin, deadlines. See lib.mjs for the output format.

import { Sandbox } from "e2b"
import { Collector, main, step, until, within } from "./lib.mjs"

await main(async (sandboxes) => {
  let sbx
  await step("create", async () => {
    sbx = await sandboxes.create({
      metadata: { suite: "js-commands" },
      envs: { SBX_LEVEL: "from-create", SBX_KEEP: "kept" },
    })
    return {
      sandboxId: sbx.sandboxId,
      // What the SDK took from the create response; it gates features such as closeStdin.
      envdVersion: sbx.envdApi?.version ?? null,
      hasAccessToken: Boolean(sbx.envdAccessToken),
    }
  })
  if (!sbx) return

  const result = (r) => ({ stdout: r.stdout, stderr: r.stderr, exitCode: r.exitCode, error: r.error ?? null })

  await step("run_output", async () =>
    result(await sbx.commands.run("echo out; echo err >&2; echo out2")),
  )
  await step("run_exit_error", async () => sbx.commands.run("echo partial; echo bad >&2; exit 3"))
  await step("run_utf8", async () => (await sbx.commands.run("printf 'h\\xc3\\xa9llo \\xe2\\x9c\\x93\\n'")).stdout)
  await step("run_large", async () => {
    const r = await sbx.commands.run("seq 1 200000")
    const lines = r.stdout.split("\n")
    return { length: r.stdout.length, lines: lines.length - 1, first: lines[0], last: lines.at(-2) }
  })
  await step("run_env", async () => {
    const r = await sbx.commands.run(
      'echo "id=$E2B_SANDBOX_ID"; echo "sbx=$E2B_SANDBOX"; echo "tpl=$E2B_TEMPLATE_ID"; ' +
        'echo "level=$SBX_LEVEL"; echo "keep=$SBX_KEEP"; echo "cmd=$PER_CMD"; echo "home=$HOME"; echo "user=$USER"',
      { envs: { PER_CMD: "per command", SBX_LEVEL: "from-command" } },
    )
    return Object.fromEntries(r.stdout.trim().split("\n").map((l) => l.split(/=(.*)/s).slice(0, 2)))
  })
  await step("run_env_not_persisted", async () =>
    (await sbx.commands.run('echo "cmd=${PER_CMD-unset} level=$SBX_LEVEL"')).stdout,
  )
  await step("run_cwd", async () => (await sbx.commands.run("pwd", { cwd: "/tmp" })).stdout)
  await step("run_default_cwd_user", async () => (await sbx.commands.run("pwd; id -un")).stdout)
  await step("run_as_root", async () => (await sbx.commands.run("id -un; id -u", { user: "root" })).stdout)
  await step("run_unknown_user", async () => sbx.commands.run("true", { user: "nobody-here-xyz" }))
  await step("run_missing_cwd", async () => sbx.commands.run("true", { cwd: "/does/not/exist" }))
  await step("sudo", async () => (await sbx.commands.run("sudo -n id -un")).stdout)

  // Live output: the first line arrives while the command is still running.
  await step("live_output", async () => {
    const out = new Collector()
    const handle = await sbx.commands.run("echo first; sleep 60; echo never", {
      background: true,
      onStdout: out.push,
    })
    await out.waitFor(/first\n/)
    const running = handle.exitCode === undefined
    const killed = await handle.kill()
    const waited = await handle.wait().then(
      () => "resolved",
      (e) => ({ name: e.name, exitCode: e.exitCode, error: e.error }),
    )
    return { running, killed, waited, text: out.text }
  })

  // Background command: list shows it with its config; kill ends it; a second kill finds nothing.
  await step("background", async () => {
    const handle = await sbx.commands.run("sleep 91", { background: true, envs: { BG: "1" }, cwd: "/tmp" })
    const pid = handle.pid
    const listed = (await sbx.commands.list()).find((p) => p.pid === pid) ?? null
    const probe = await sbx.commands.run(`kill -0 ${pid} && echo alive; cat /proc/${pid}/cmdline | tr '\\0' ' '`)
    const killed = await sbx.commands.kill(pid)
    const waited = await handle.wait().then(
      () => "resolved",
      (e) => ({ name: e.name, exitCode: e.exitCode, error: e.error }),
    )
    const gone = await until(async () => !(await sbx.commands.list()).some((p) => p.pid === pid))
    const killedAgain = await sbx.commands.kill(pid)
    return { pid, listed, probe: probe.stdout, killed, waited, gone, killedAgain }
  })
  await step("kill_unknown_pid", async () => sbx.commands.kill(999_999))

  // stdin: send, then close (EOF) so `cat` exits 0 with everything it read.
  await step("stdin", async () => {
    const out = new Collector()
    const handle = await sbx.commands.run("cat", { background: true, stdin: true, onStdout: out.push })
    await sbx.commands.sendStdin(handle.pid, "hello\n")
    await out.waitFor(/hello\n/)
    await handle.sendStdin("world\n")
    await out.waitFor(/world\n/)
    await sbx.commands.closeStdin(handle.pid)
    const r = await within(handle.wait(), 20_000, "cat to exit after closeStdin")
    return { stdout: r.stdout, exitCode: r.exitCode, chunks: out.chunks }
  })
  await step("stdin_disabled", async () => {
    const handle = await sbx.commands.run("sleep 92", { background: true })
    try {
      return await sbx.commands.sendStdin(handle.pid, "x\n").then(() => "accepted")
    } finally {
      await handle.kill()
    }
  })

  // Disconnect, then re-attach by pid and see the rest of the output.
  await step("connect", async () => {
    const first = await sbx.commands.run('read line; echo "got:$line"', { background: true, stdin: true })
    await first.disconnect()
    const out = new Collector()
    const again = await sbx.commands.connect(first.pid, { onStdout: out.push })
    await sbx.commands.sendStdin(first.pid, "ping\n")
    const r = await within(again.wait(), 20_000, "reconnected command to end")
    return { samePid: again.pid === first.pid, stdout: r.stdout, exitCode: r.exitCode, seen: out.text }
  })
  await step("connect_unknown_pid", async () => sbx.commands.connect(999_998))

  // The command's own deadline: the SDK reports a timeout and the server kills the process.
  await step("command_timeout", async () => {
    const err = await sbx.commands.run("sleep 93", { timeoutMs: 1500 }).then(
      () => null,
      (e) => ({ name: e.name, message: e.message }),
    )
    const gone = await until(
      async () => !(await sbx.commands.run("pgrep -a -x sleep || true")).stdout.includes("sleep 93"),
      { deadlineMs: 20_000, intervalMs: 200 },
    )
    return { err, killedInSandbox: gone }
  })

  // Several commands at once on one sandbox.
  await step("concurrent", async () => {
    const rs = await Promise.all(
      Array.from({ length: 8 }, (_, i) => sbx.commands.run(`echo n${i}; sleep 0.2; echo m${i} >&2`)),
    )
    return rs.map((r) => [r.stdout, r.stderr])
  })

  await step("is_running", async () => sbx.isRunning())
  await step("static_kill", async () => Sandbox.kill(sbx.sandboxId))
})
