// pty.* of the npm e2b SDK: create with onData, sendInput, resize seen by `tput`, reconnect,
// exit codes and kill. See lib.mjs for the output format.
//
// Markers are written so the echoed input cannot match them: the shell echoes
// `echo C$(tput cols)C` but prints `C80C`.

import { Collector, main, step, until, within } from "./lib.mjs"

await main(async (sandboxes) => {
  let sbx
  await step("create", async () => {
    sbx = await sandboxes.create({ metadata: { suite: "js-pty" }, envs: { SBX_LEVEL: "from-create" } })
    return { sandboxId: sbx.sandboxId }
  })
  if (!sbx) return

  const out = new Collector()
  let term
  await step("pty_create", async () => {
    term = await sbx.pty.create({ cols: 80, rows: 24, onData: out.push, cwd: "/tmp", envs: { PTY_VAR: "pv" } })
    const listed = (await sbx.commands.list()).find((p) => p.pid === term.pid) ?? null
    return { pid: term.pid, listed }
  })
  if (!term) return

  // Ask the shell something and wait for the answer, starting after what was seen so far.
  const ask = async (input, re) => {
    const from = out.text.length
    await sbx.pty.sendInput(term.pid, new TextEncoder().encode(input))
    return (await out.waitFor(re, { from })).slice(1)
  }

  await step("pty_initial", async () => {
    const [cols, lines] = await ask("echo C$(tput cols)x$(tput lines)C\n", /C(\d+)x(\d+)C/)
    const [isTty] = await ask("test -t 0 && echo T$((1))yesT || echo T$((0))noT\n", /T\d(\w+)T/)
    return { cols: Number(cols), lines: Number(lines), isTty }
  })
  await step("pty_env", async () => {
    const [value] = await ask(
      'echo "E$((1))|$TERM|$PTY_VAR|$SBX_LEVEL|$(pwd)|$(id -un)|E$((2))"\n',
      /E1\|([^\r\n]*)\|E2/,
    )
    const [term_, ptyVar, level, cwd, user] = value.split("|")
    return { TERM: term_, PTY_VAR: ptyVar, SBX_LEVEL: level, cwd, user }
  })
  await step("pty_resize", async () => {
    await sbx.pty.resize(term.pid, { cols: 123, rows: 41 })
    const [cols, lines] = await ask("echo S$(tput cols)x$(tput lines)S\n", /S(\d+)x(\d+)S/)
    const [stty] = await ask("echo Z$(stty size | tr ' ' x)Z\n", /Z(\d+x\d+)Z/)
    return { cols: Number(cols), lines: Number(lines), stty }
  })
  await step("pty_control_c", async () => {
    // Ctrl-C reaches the foreground job through the terminal's line discipline.
    await sbx.pty.sendInput(term.pid, new TextEncoder().encode("sleep 94\n"))
    const started = await until(async () =>
      (await sbx.commands.run("pgrep -a -x sleep || true")).stdout.includes("sleep 94"),
    )
    const [answer] = await ask("\x03echo I$((6*7))I\n", /I(\d+)I/)
    const left = (await sbx.commands.run("pgrep -a -x sleep || true")).stdout
    return { started, answer, sleepLeft: left.includes("sleep 94") }
  })

  // Disconnect, reattach by pid, and keep talking to the same shell.
  await step("pty_reconnect", async () => {
    const oldPid = term.pid
    await term.disconnect()
    const before = out.text.length
    await sbx.pty.sendInput(term.pid, new TextEncoder().encode("echo D$((2+2))D\n"))
    const again = new Collector()
    const handle = await sbx.pty.connect(term.pid, { onData: again.push })
    await sbx.pty.sendInput(term.pid, new TextEncoder().encode("echo R$((3+4))R\n"))
    const [r] = (await again.waitFor(/R(\d+)R/)).slice(1)
    const oldHandleGotMore = out.text.length > before
    term = handle
    return { samePid: handle.pid === oldPid, answer: r, oldHandleGotMore, again: again.text.slice(-200) }
  })
  await step("pty_exit_code", async () => {
    await sbx.pty.sendInput(term.pid, new TextEncoder().encode("exit 3\n"))
    return within(term.wait(), 20_000, "pty to end after exit 3").then(
      (r) => ({ resolved: r.exitCode }),
      (e) => ({ name: e.name, exitCode: e.exitCode, error: e.error }),
    )
  })
  await step("pty_exit_zero", async () => {
    const t = await sbx.pty.create({ cols: 40, rows: 10, onData: () => {} })
    await sbx.pty.sendInput(t.pid, new TextEncoder().encode("exit\n"))
    const r = await within(t.wait(), 20_000, "pty to end after exit")
    return { exitCode: r.exitCode, stdout: r.stdout }
  })
  await step("pty_kill", async () => {
    const t = await sbx.pty.create({ cols: 40, rows: 10, onData: () => {} })
    const killed = await sbx.pty.kill(t.pid)
    const waited = await within(t.wait(), 20_000, "killed pty to end").then(
      (r) => ({ resolved: r.exitCode }),
      (e) => ({ name: e.name, exitCode: e.exitCode, error: e.error }),
    )
    const killedAgain = await sbx.pty.kill(t.pid)
    return { killed, waited, killedAgain }
  })
  await step("pty_unknown_pid", async () => {
    const results = {}
    for (const [name, fn] of Object.entries({
      sendInput: () => sbx.pty.sendInput(999_997, new Uint8Array([10])),
      resize: () => sbx.pty.resize(999_997, { cols: 10, rows: 10 }),
      connect: () => sbx.pty.connect(999_997, { onData: () => {} }),
    })) {
      results[name] = await fn().then(
        () => "resolved",
        (e) => e.name,
      )
    }
    return results
  })
})
