// Shared helpers for the JS SDK compat scripts (driven by tests/compat/test_js_sdk.py).
//
// Each script runs a sequence of named steps against a live server. Every step prints one
// JSON line as soon as it finishes: {"step": name, "ok": true, "value": ...} or
// {"step": name, "ok": false, "error": {...}}. The Python side asserts on those values, so a
// failure shows what the SDK actually returned or threw, and a hang still leaves the lines
// printed so far. The last line is {"done": true}. `ms` (a step's duration) is for reading
// logs only; nothing asserts on it.

import { Sandbox } from "e2b"

const STEP_DEADLINE_MS = 45_000

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n")
}

/** What a user can see of an error: its class, message and command result fields. */
export function describeError(err) {
  if (!(err instanceof Error)) return { name: typeof err, message: String(err) }
  const out = { name: err.name, className: err.constructor?.name, message: err.message }
  for (const key of ["exitCode", "stdout", "stderr", "error", "code", "rawMessage"]) {
    let value
    try {
      value = err[key]
    } catch {
      continue
    }
    if (value !== undefined && typeof value !== "function") out[key] = value
  }
  return out
}

/** Reject with a plain Error if `promise` has not settled after `ms` (a hang guard, not an assert). */
export function within(promise, ms, what) {
  let timer
  const guard = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`hang guard: ${what} did not settle in ${ms} ms`)), ms)
  })
  return Promise.race([promise, guard]).finally(() => clearTimeout(timer))
}

/** Poll `fn` until it returns a truthy value; return that value, or the last one at the deadline. */
export async function until(fn, { deadlineMs = 30_000, intervalMs = 100 } = {}) {
  const end = Date.now() + deadlineMs
  let last
  for (;;) {
    last = await fn()
    if (last || Date.now() >= end) return last
    await new Promise((r) => setTimeout(r, intervalMs))
  }
}

/** Run one named step; record its value or error. Never throws. */
export async function step(name, fn) {
  const start = performance.now()
  const ms = () => Math.round(performance.now() - start)
  try {
    const value = await within(Promise.resolve().then(fn), STEP_DEADLINE_MS, `step ${name}`)
    emit({ step: name, ok: true, value: value === undefined ? null : value, ms: ms() })
    return value
  } catch (err) {
    emit({ step: name, ok: false, error: describeError(err), ms: ms() })
    return undefined
  }
}

/**
 * Collects output delivered through onStdout/onData callbacks and lets a step wait until
 * the text seen so far matches a pattern.
 */
export class Collector {
  constructor() {
    this.text = ""
    this.chunks = []
    this.waiters = []
    this.decoder = new TextDecoder()
    this.push = this.push.bind(this)
  }

  push(chunk) {
    const s = typeof chunk === "string" ? chunk : this.decoder.decode(chunk, { stream: true })
    this.chunks.push(s)
    this.text += s
    this.waiters = this.waiters.filter((w) => !w())
  }

  /** Resolve with the first match of `re` in the text received after `from` (an offset). */
  waitFor(re, { from = 0, ms = 20_000 } = {}) {
    return within(
      new Promise((resolve) => {
        const check = () => {
          const m = this.text.slice(from).match(re)
          if (m) resolve(m)
          return Boolean(m)
        }
        if (!check()) this.waiters.push(check)
      }),
      ms,
      `output matching ${re} (seen: ${JSON.stringify(this.text.slice(-300))})`,
    )
  }
}

/** Create sandboxes that are killed when the script ends, whatever happens. */
export class Sandboxes {
  constructor() {
    this.created = []
  }

  /** `cls`: the Sandbox class of "e2b", or of another SDK built on it (@e2b/code-interpreter). */
  async create(opts, cls = Sandbox) {
    const sbx = await cls.create(opts)
    this.created.push(sbx)
    return sbx
  }

  async killAll() {
    await Promise.all(this.created.map((s) => s.kill().catch(() => undefined)))
  }
}

/** Wrap a script's body: run it, clean up, print the end marker. */
export async function main(body) {
  const sandboxes = new Sandboxes()
  try {
    await body(sandboxes)
  } catch (err) {
    emit({ step: "__script__", ok: false, error: describeError(err) })
  } finally {
    await sandboxes.killAll()
    emit({ done: true })
  }
}
