// A sandbox that dies while commands stream: the npm e2b SDK must see the streams break
// (an error), never a clean end. See lib.mjs for the output format.

import { Sandbox } from "e2b"
import { Collector, main, step, within } from "./lib.mjs"

const outcome = (promise) =>
  within(promise, 30_000, "stream to settle after the sandbox died").then(
    (r) => ({ settled: "resolved", exitCode: r?.exitCode ?? null, stdout: r?.stdout ?? null }),
    (e) => ({ settled: "rejected", name: e.name, message: e.message, exitCode: e.exitCode ?? null }),
  )

/** Open a foreground command, a background command and a PTY, all streaming. */
async function openStreams(sbx) {
  const fg = new Collector()
  const bg = new Collector()
  const pty = new Collector()
  const foreground = sbx.commands.run("echo fg-started; sleep 95; echo fg-done", { onStdout: fg.push })
  // Keep the promise observed so an early rejection is not reported as unhandled.
  foreground.catch(() => undefined)
  const background = await sbx.commands.run("echo bg-started; sleep 96", { background: true, onStdout: bg.push })
  const term = await sbx.pty.create({ cols: 80, rows: 24, onData: pty.push })
  await sbx.pty.sendInput(term.pid, new TextEncoder().encode("echo P$((1+1))P\n"))
  await Promise.all([fg.waitFor(/fg-started/), bg.waitFor(/bg-started/), pty.waitFor(/P2P/)])
  return { foreground, background, term }
}

async function settleAll({ foreground, background, term }) {
  const [fg, bg, pty] = await Promise.all([outcome(foreground), outcome(background.wait()), outcome(term.wait())])
  return { foreground: fg, background: bg, pty }
}

await main(async (sandboxes) => {
  await step("killed_mid_stream", async () => {
    const sbx = await sandboxes.create({ metadata: { suite: "js-killed" } })
    const streams = await openStreams(sbx)
    const killed = await Sandbox.kill(sbx.sandboxId)
    const settled = await settleAll(streams)
    const running = await sbx.isRunning()
    const failure = (e) => ({ name: e.name, message: e.message })
    const after = await sbx.commands.run("true").then(() => "ran", failure)
    const listAfter = await sbx.commands.list().then(() => "listed", failure)
    return { killed, ...settled, running, after, listAfter }
  })

  await step("expired_mid_stream", async () => {
    const sbx = await sandboxes.create({ metadata: { suite: "js-killed" } })
    const streams = await openStreams(sbx)
    await sbx.setTimeout(0)
    const settled = await settleAll(streams)
    const running = await sbx.isRunning()
    return { ...settled, running }
  })
})
