// sandbox.files.watchDir through the npm e2b SDK (the WatchDir Connect stream). Driven by
// tests/compat/test_js_sdk_files.py; see lib.mjs for the output format.
//
// "Exactly these events" needs an end point: after the actions under test, a step makes a
// barrier directory through the SDK and waits for its CREATE. inotify keeps one ordered queue
// per watch, so everything the actions caused arrives before the barrier's event.

import { FileNotFoundError, InvalidArgumentError, NotFoundError, Sandbox } from "e2b"
import { describeError, main, step, within } from "./lib.mjs"

const outcome = (promise) =>
  promise.then(
    (value) => ({ ok: true, value: value === undefined ? null : String(value) }),
    (err) => ({
      ok: false,
      ...describeError(err),
      isNotFound: err instanceof NotFoundError,
      isFileNotFound: err instanceof FileNotFoundError,
      isInvalidArgument: err instanceof InvalidArgumentError,
    }),
  )

/** Every event of one watch, in order, and a way to wait for one. */
class EventLog {
  constructor() {
    this.events = []
    this.waiters = []
    this.exit = null
    this.exited = new Promise((resolve) => {
      this.resolveExit = resolve
    })
    this.onEvent = this.onEvent.bind(this)
    this.onExit = this.onExit.bind(this)
  }

  onEvent(e) {
    this.events.push(e)
    this.waiters = this.waiters.filter((w) => !w())
  }

  onExit(err) {
    this.exit = err === undefined ? { clean: true } : { clean: false, ...describeError(err) }
    this.resolveExit(this.exit)
  }

  /** Resolve with the index of the first event after `from` for which `pred` holds. */
  waitFor(pred, { from = 0, what = "event" } = {}) {
    return within(
      new Promise((resolve) => {
        const check = () => {
          const i = this.events.findIndex((e, n) => n >= from && pred(e))
          if (i >= 0) resolve(i)
          return i >= 0
        }
        if (!check()) this.waiters.push(check)
      }),
      20_000,
      `${what} (seen: ${JSON.stringify(this.events.slice(-20).map(pair))})`,
    )
  }
}

const pair = (e) => [e.name, e.type]

let barriers = 0

/**
 * The events `log` received since `from`, up to a barrier made in `dir` (a path relative to
 * the watched directory `root`, "" for the root itself). Returns [name, type] pairs, barriers
 * left out, and the offset after the barrier.
 */
async function eventsUntilBarrier(sbx, log, root, from, dir = "") {
  const name = `${dir ? `${dir}/` : ""}zz-barrier-${++barriers}`
  await sbx.files.makeDir(`${root}/${name}`)
  const at = await log.waitFor((e) => e.name === name && e.type === "create", { from, what: `barrier ${name}` })
  // makeDir chowns the new directory: its CHMOD may follow; no barrier's events are reported.
  const events = log.events.slice(from, at).filter((e) => !e.name.includes("zz-barrier-"))
  return { events: events.map(pair), next: at + 1 }
}

await main(async (sandboxes) => {
  const sbx = await sandboxes.create({ metadata: { suite: "js-watch" } })

  const flat = "w/flat"
  await sbx.files.makeDir(flat)
  const log = new EventLog()
  let handle
  let at = 0

  await step("watch_start", async () => {
    handle = await sbx.files.watchDir(flat, log.onEvent, { onExit: log.onExit })
    // Nothing happened yet: the first events are the barrier's.
    const r = await eventsUntilBarrier(sbx, log, flat, at)
    at = r.next
    return r.events
  })

  await step("upload_new_file", async () => {
    await sbx.files.write(`${flat}/up.txt`, "content")
    const r = await eventsUntilBarrier(sbx, log, flat, at)
    at = r.next
    return r.events
  })

  await step("upload_overwrite", async () => {
    await sbx.files.write(`${flat}/up.txt`, "new content")
    const r = await eventsUntilBarrier(sbx, log, flat, at)
    at = r.next
    return r.events
  })

  await step("upload_several", async () => {
    await sbx.files.write([
      { path: `${flat}/one.txt`, data: "1" },
      { path: `${flat}/two.txt`, data: new Blob(["2"]) },
    ])
    const r = await eventsUntilBarrier(sbx, log, flat, at)
    at = r.next
    return r.events
  })

  await step("upload_stream", async () => {
    // A ReadableStream goes as application/octet-stream; same sequence as multipart.
    const body = new Blob(["streamed"]).stream()
    await sbx.files.write(`${flat}/streamed.txt`, body)
    const r = await eventsUntilBarrier(sbx, log, flat, at)
    at = r.next
    return r.events
  })

  await step("rename", async () => {
    await sbx.files.rename(`${flat}/up.txt`, `${flat}/moved.txt`)
    const r = await eventsUntilBarrier(sbx, log, flat, at)
    at = r.next
    return r.events
  })

  await step("remove", async () => {
    await sbx.files.remove(`${flat}/moved.txt`)
    const r = await eventsUntilBarrier(sbx, log, flat, at)
    at = r.next
    return r.events
  })

  await step("not_recursive", async () => {
    // A subdirectory's CREATE is seen; what happens inside it is not.
    await sbx.files.makeDir(`${flat}/sub`)
    await sbx.files.write(`${flat}/sub/inside.txt`, "x")
    const r = await eventsUntilBarrier(sbx, log, flat, at)
    at = r.next
    return r.events
  })

  await step("command_writes", async () => {
    await sbx.commands.run(`echo hello > ${flat}/by-shell.txt && rm ${flat}/one.txt`)
    const r = await eventsUntilBarrier(sbx, log, flat, at)
    at = r.next
    return r.events
  })

  await step("stop", async () => {
    await handle.stop()
    const exit = await within(log.exited, 10_000, "onExit after stop")
    // After stop, nothing more reaches onEvent: a second watch sees the barrier, this one not.
    const witness = new EventLog()
    const other = await sbx.files.watchDir(flat, witness.onEvent)
    const seenBefore = log.events.length
    await sbx.files.write(`${flat}/after-stop.txt`, "x")
    const r = await eventsUntilBarrier(sbx, witness, flat, 0)
    await other.stop()
    return { exit, witness: r.events, newEventsOnStopped: log.events.length - seenBefore }
  })

  await step("recursive", async () => {
    const root = "w/rec"
    await sbx.files.makeDir(`${root}/existing`)
    const rec = new EventLog()
    const h = await sbx.files.watchDir(root, rec.onEvent, { recursive: true, includeEntry: true })
    await sbx.files.write(`${root}/existing/e.txt`, "e")
    await sbx.files.makeDir(`${root}/later`)
    await sbx.files.write(`${root}/later/f.txt`, "ff")
    await sbx.files.makeDir(`${root}/later/deeper`)
    await sbx.files.write(`${root}/later/deeper/g.txt`, "ggg")
    const r = await eventsUntilBarrier(sbx, rec, root, 0, "later/deeper")
    await h.stop()
    const entries = {}
    for (const e of rec.events) {
      if (e.name === "later/f.txt" && e.type === "write" && e.entry) {
        entries.write = { path: e.entry.path, name: e.entry.name, type: e.entry.type, size: e.entry.size }
      }
      if (e.name === "later" && e.type === "create" && e.entry) {
        // (not the owner: the entry is read when the event is handled, before or after the chown)
        entries.dir = { path: e.entry.path, name: e.entry.name, type: e.entry.type }
      }
    }
    return { events: r.events, entries }
  })

  await step("without_entry", async () => {
    const root = "w/noentry"
    await sbx.files.makeDir(root)
    const plain = new EventLog()
    const h = await sbx.files.watchDir(root, plain.onEvent)
    await sbx.files.write(`${root}/x.txt`, "x")
    await eventsUntilBarrier(sbx, plain, root, 0)
    await h.stop()
    return plain.events.map((e) => e.entry === undefined)
  })

  await step("errors", async () => ({
    missing: await outcome(sbx.files.watchDir("w/does-not-exist", () => {})),
    file: await outcome(
      sbx.files.write("w/a-file.txt", "x").then(() => sbx.files.watchDir("w/a-file.txt", () => {})),
    ),
    unknownUser: await outcome(sbx.files.watchDir("w", () => {}, { user: "nobody-here" })),
  }))

  await step("sandbox_killed", async () => {
    const doomed = await sandboxes.create({ metadata: { suite: "js-watch-killed" } })
    await doomed.files.makeDir("d")
    const dying = new EventLog()
    await doomed.files.watchDir("d", dying.onEvent, { onExit: dying.onExit })
    await doomed.files.write("d/before.txt", "x")
    await dying.waitFor((e) => e.name === "before.txt" && e.type === "write", { what: "write before the kill" })
    const killed = await Sandbox.kill(doomed.sandboxId)
    const exit = await within(dying.exited, 30_000, "onExit after the sandbox was killed")
    return { killed, exit }
  })
})
