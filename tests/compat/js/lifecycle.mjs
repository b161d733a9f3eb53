// Sandbox lifecycle through the npm e2b SDK: create, getInfo, list (metadata filter, paging),
// setTimeout, connect, server-enforced expiry, kill. See lib.mjs for the output format.

import { randomBytes } from "node:crypto"
import { Sandbox } from "e2b"
import { main, step, until } from "./lib.mjs"

const info = (i) => ({
  sandboxId: i.sandboxId,
  templateId: i.templateId,
  metadata: i.metadata,
  envdVersion: i.envdVersion,
  state: i.state,
  cpuCount: i.cpuCount,
  memoryMB: i.memoryMB,
  startedAt: i.startedAt.toISOString(),
  endAt: i.endAt.toISOString(),
})
const failure = (e) => ({ name: e.name, message: e.message })

await main(async (sandboxes) => {
  // A value that needs escaping at every level of the metadata query's encoding.
  const tag = `js ${randomBytes(4).toString("hex")} a&b=c/é%`
  const other = `${tag}-other`
  const sbx = {}

  await step("create", async () => {
    for (const role of ["a", "b", "c"]) {
      sbx[role] = await sandboxes.create({ metadata: { suite: tag, role }, timeoutMs: 120_000 })
    }
    sbx.other = await sandboxes.create({ metadata: { suite: other, role: "a" } })
    return Object.fromEntries(Object.entries(sbx).map(([k, s]) => [k, s.sandboxId]))
  })
  if (!sbx.other) return
  const ids = Object.fromEntries(Object.entries(sbx).map(([k, s]) => [k, s.sandboxId]))

  await step("get_info", async () => info(await sbx.a.getInfo()))
  await step("static_get_info", async () => info(await Sandbox.getInfo(sbx.b.sandboxId)))

  // Paging: 3 matches, 2 per page; the other suite's sandbox never shows up.
  await step("list_paged", async () => {
    const paginator = Sandbox.list({ query: { metadata: { suite: tag } }, limit: 2 })
    const pages = []
    while (paginator.hasNext && pages.length < 5) {
      const items = await paginator.nextItems()
      pages.push({ ids: items.map((i) => i.sandboxId), hasNextAfter: paginator.hasNext })
    }
    return { pages, ids }
  })
  await step("list_two_keys", async () => {
    const items = await Sandbox.list({ query: { metadata: { suite: tag, role: "b" } } }).nextItems()
    return items.map((i) => ({ sandboxId: i.sandboxId, metadata: i.metadata, state: i.state }))
  })
  await step("list_item", async () => {
    const items = await Sandbox.list({ query: { metadata: { suite: other } } }).nextItems()
    return items.map((i) => ({ ...info(i), hasStartedAt: !Number.isNaN(i.startedAt.getTime()) }))
  })
  await step("list_state_running", async () => {
    const items = await Sandbox.list({ query: { metadata: { suite: tag }, state: ["running"] } }).nextItems()
    return items.map((i) => i.sandboxId).sort()
  })

  // setTimeout moves endAt; connect with a shorter timeout does not shorten it.
  await step("set_timeout", async () => {
    const before = await sbx.a.getInfo()
    await sbx.a.setTimeout(600_000)
    const after = await sbx.a.getInfo()
    const connected = await Sandbox.connect(sbx.a.sandboxId, { timeoutMs: 10_000 })
    const afterConnect = await sbx.a.getInfo()
    const run = await connected.commands.run("echo via-connect; echo $E2B_SANDBOX_ID")
    return {
      startedAt: before.startedAt.toISOString(),
      endBefore: before.endAt.toISOString(),
      endAfter: after.endAt.toISOString(),
      endAfterConnect: afterConnect.endAt.toISOString(),
      connectedId: connected.sandboxId,
      run: run.stdout,
    }
  })
  await step("connect_unknown", async () => Sandbox.connect("nosuchsandbox0000000").then(() => "connected", failure))
  await step("get_info_unknown", async () => Sandbox.getInfo("nosuchsandbox0000000").then(() => "found", failure))

  // Expiry is the server's job: setTimeout(0) ends the sandbox now.
  await step("timeout_zero", async () => {
    await sbx.b.setTimeout(0)
    const stopped = await until(async () => !(await sbx.b.isRunning()))
    const listed = await Sandbox.list({ query: { metadata: { suite: tag, role: "b" } } }).nextItems()
    const run = await sbx.b.commands.run("echo still here").then((r) => r.stdout, failure)
    return { stopped, listed: listed.map((i) => ({ sandboxId: i.sandboxId, state: i.state })), run }
  })
  // ... and a short create timeout ends it without any further call.
  await step("create_timeout_expires", async () => {
    const s = await sandboxes.create({ metadata: { suite: tag, role: "short" }, timeoutMs: 2_000 })
    const first = await s.isRunning()
    const stopped = await until(async () => !(await s.isRunning()), { deadlineMs: 40_000, intervalMs: 250 })
    return { first, stopped }
  })

  await step("kill", async () => {
    const killed = await sbx.c.kill()
    const running = await sbx.c.isRunning()
    const killedAgain = await Sandbox.kill(sbx.c.sandboxId)
    const run = await sbx.c.commands.run("echo still here").then((r) => r.stdout, failure)
    const getInfo = await sbx.c.getInfo().then((i) => i.state, failure)
    const connect = await Sandbox.connect(sbx.c.sandboxId).then(() => "connected", failure)
    const listed = await Sandbox.list({ query: { metadata: { suite: tag } } }).nextItems()
    return { killed, running, killedAgain, run, getInfo, connect, listedIds: listed.map((i) => i.sandboxId).sort() }
  })

  await step("create_unknown_template", async () =>
    Sandbox.create("no-such-template-xyz").then(async (s) => {
      await s.kill()
      return "created"
    }, failure),
  )
  await step("wrong_api_key", async () =>
    Sandbox.list({ apiKey: `e2b_${"0".repeat(40)}` })
      .nextItems()
      .then(() => "listed", failure),
  )
  await step("create_with_wrong_api_key", async () =>
    Sandbox.create({ apiKey: `e2b_${"0".repeat(40)}` }).then(() => "created", failure),
  )
})
