// getMetrics through the npm e2b SDK: samples appear, carry the sandbox's limits, filter by
// the start/end the SDK sends (Unix seconds, rounded), and unknown or killed sandboxes throw.
// See lib.mjs for the output format.

import { Sandbox } from "e2b"
import { main, step, until } from "./lib.mjs"

const plain = (m) => ({ ...m, timestamp: m.timestamp.toISOString() })
const failure = (e) => ({ name: e.name, message: e.message })
const second = (date) => new Date(Math.floor(date.getTime() / 1000) * 1000)

await main(async (sandboxes) => {
  let sbx
  await step("create", async () => {
    sbx = await sandboxes.create({ metadata: { suite: "js-metrics" }, timeoutMs: 120_000 })
    const info = await sbx.getInfo()
    return { sandboxId: sbx.sandboxId, cpuCount: info.cpuCount, memoryMB: info.memoryMB }
  })
  if (!sbx) return

  // Two samples at least (the node samples every few seconds).
  let all = []
  await step("two_samples", async () => {
    all = await until(async () => {
      const m = await sbx.getMetrics()
      return m.length >= 2 && m
    }, { deadlineMs: 40_000, intervalMs: 500 })
    return (all || []).map(plain)
  })
  if (!all || all.length < 2) return
  const [first, next] = all

  await step("from_second_sample", async () =>
    (await sbx.getMetrics({ start: second(next.timestamp), end: new Date() })).map(plain),
  )
  await step("up_to_first_sample", async () =>
    (await sbx.getMetrics({ start: new Date(first.timestamp.getTime() - 30_000), end: second(first.timestamp) })).map(plain),
  )
  await step("past_range", async () => {
    const now = Date.now()
    return (await sbx.getMetrics({ start: new Date(now - 7_200_000), end: new Date(now - 3_600_000) })).map(plain)
  })
  await step("static", async () => (await Sandbox.getMetrics(sbx.sandboxId)).slice(0, 2).map(plain))
  await step("unknown", async () => Sandbox.getMetrics("nosuchsandbox0000000").then(() => "returned", failure))
  await step("killed", async () => {
    await sbx.kill()
    return sbx.getMetrics().then(() => "returned", failure)
  })
})
