// Pause, resume, snapshots and fork through the npm e2b SDK: a paused sandbox stops
// answering, connect brings it back with its files, its process and its boot id; a second
// pause is false; a snapshot makes independent copies and is deleted once; fork copies.
// See lib.mjs for the output format.

import { Sandbox } from "e2b"
import { main, step } from "./lib.mjs"

const failure = (e) => ({ name: e.name, message: e.message })

await main(async (sandboxes) => {
  let sbx
  let before
  await step("create", async () => {
    sbx = await sandboxes.create({ metadata: { suite: "js-pause" }, timeoutMs: 120_000 })
    await sbx.files.write("/home/user/kept.txt", "kept across a pause")
    await sbx.commands.run("sleep 100000", { background: true })
    before = (await sbx.commands.run("cat /proc/sys/kernel/random/boot_id")).stdout
    return { sandboxId: sbx.sandboxId }
  })
  if (!sbx) return

  await step("pause", async () => ({ paused: await sbx.pause(), running: await sbx.isRunning() }))
  await step("second_pause", async () => Sandbox.pause(sbx.sandboxId))
  await step("info_paused", async () => (await Sandbox.getInfo(sbx.sandboxId)).state)
  await step("resume", async () => {
    const again = await Sandbox.connect(sbx.sandboxId, { timeoutMs: 120_000 })
    return {
      sameId: again.sandboxId === sbx.sandboxId,
      running: await again.isRunning(),
      file: await again.files.read("/home/user/kept.txt"),
      sleeping: (await again.commands.run("pgrep -c sleep")).stdout.trim(),
      sameBootId: (await again.commands.run("cat /proc/sys/kernel/random/boot_id")).stdout === before,
      oldHandleWorks: (await sbx.commands.run("echo still")).stdout,
    }
  })

  let snap
  await step("snapshot", async () => {
    snap = await sbx.createSnapshot()
    return { hasId: typeof snap.snapshotId === "string" && snap.snapshotId.length > 0 }
  })
  if (snap) {
    await step("listed", async () => {
      const found = []
      const pages = Sandbox.listSnapshots({ sandboxId: sbx.sandboxId })
      while (pages.hasNext) found.push(...(await pages.nextItems()))
      return found.some((s) => s.snapshotId === snap.snapshotId)
    })
    await step("copies", async () => {
      const a = await Sandbox.create(snap.snapshotId, { timeoutMs: 120_000 })
      sandboxes.created.push(a)
      const b = await Sandbox.create(snap.snapshotId, { timeoutMs: 120_000 })
      sandboxes.created.push(b)
      await a.files.write("/home/user/kept.txt", "changed in a")
      return {
        a: await a.files.read("/home/user/kept.txt"),
        b: await b.files.read("/home/user/kept.txt"),
        distinct: a.sandboxId !== b.sandboxId && a.sandboxId !== sbx.sandboxId,
      }
    })
    await step("delete_snapshot", async () => [
      await Sandbox.deleteSnapshot(snap.snapshotId),
      await Sandbox.deleteSnapshot(snap.snapshotId),
    ])
  }

  await step("fork", async () => {
    const forks = await sbx.fork({ count: 2 })
    const files = []
    for (const f of forks) {
      files.push(await f.files.read("/home/user/kept.txt"))
      await f.kill()
    }
    return { count: forks.length, files }
  })

  await step("killed_then_paused", async () => {
    await sbx.kill()
    try {
      await Sandbox.pause(sbx.sandboxId)
      return { threw: false }
    } catch (e) {
      return { threw: true, ...failure(e) }
    }
  })
})
