// sandbox.files.* through the npm e2b SDK: /files uploads and downloads, the filesystem RPCs,
// metadata, signed URLs used with plain fetch, and the errors. Driven by
// tests/compat/test_js_sdk_files.py; see lib.mjs for the output format.

import { FileNotFoundError, InvalidArgumentError, NotFoundError } from "e2b"
import { describeError, main, step } from "./lib.mjs"

const enc = new TextEncoder()

/** An entry as the SDK returns it, with the Date made comparable. */
const entry = (e) =>
  e === undefined
    ? null
    : {
        ...e,
        modifiedTime: e.modifiedTime instanceof Date ? e.modifiedTime.toISOString() : (e.modifiedTime ?? null),
        symlinkTarget: e.symlinkTarget ?? null,
        metadata: e.metadata ?? null,
      }

/** What a user sees of an upload result: path, name, type, metadata. */
const written = (w) => ({ path: w.path, name: w.name, type: w.type, metadata: w.metadata ?? null })

/** Resolve to "ok:<value>" or the error's class facts. */
const outcome = (promise) =>
  promise.then(
    (value) => ({ ok: true, value: value === undefined ? null : value }),
    (err) => ({
      ok: false,
      ...describeError(err),
      isNotFound: err instanceof NotFoundError,
      isFileNotFound: err instanceof FileNotFoundError,
      isInvalidArgument: err instanceof InvalidArgumentError,
    }),
  )

async function collect(stream) {
  const chunks = []
  const reader = stream.getReader()
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    chunks.push(value)
  }
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0))
  let at = 0
  for (const c of chunks) {
    out.set(c, at)
    at += c.length
  }
  return out
}

/** A plain fetch: no SDK, no routing headers. Returns status and body text. */
async function plainFetch(url, init) {
  const res = await fetch(url, init)
  return { status: res.status, contentType: res.headers.get("content-type"), body: await res.text() }
}

const ALL_BYTES = Uint8Array.from({ length: 256 * 64 }, (_, i) => i % 256)

await main(async (sandboxes) => {
  const sbx = await sandboxes.create({ metadata: { suite: "js-files" } })
  const run = async (cmd, opts) => (await sbx.commands.run(cmd, opts)).stdout

  await step("create", () => ({ sandboxId: sbx.sandboxId, hasAccessToken: Boolean(sbx.envdAccessToken) }))

  // --- write ------------------------------------------------------------------------------

  await step("write_string", async () => {
    const info = await sbx.files.write("js/a.txt", "h\u00e9llo \u2713")
    return { info: written(info), stat: await run("stat -c '%a %U %G %s' js js/a.txt") }
  })

  await step("write_arraybuffer", async () => {
    const info = await sbx.files.write("/home/user/js/bytes.bin", ALL_BYTES.slice().buffer)
    return { info: written(info), sum: await run("sha256sum js/bytes.bin | cut -c1-64") }
  })

  await step("write_blob", async () => {
    const info = await sbx.files.write("~/js/blob.txt", new Blob(["blob ", "content"]))
    return { info: written(info), content: await run("cat js/blob.txt") }
  })

  await step("write_stream", async () => {
    // A ReadableStream: octet-stream, streamed with duplex "half".
    const parts = ["stream ", "of ", "chunks"]
    const body = new ReadableStream({
      pull(controller) {
        const next = parts.shift()
        if (next === undefined) controller.close()
        else controller.enqueue(enc.encode(next))
      },
    })
    const info = await sbx.files.write("js/stream.txt", body)
    return { info: written(info), content: await run("cat js/stream.txt") }
  })

  await step("write_gzip", async () => {
    const text = "compressible ".repeat(5000)
    const info = await sbx.files.write("js/gz.txt", text, { gzip: true })
    const back = await sbx.files.read("js/gz.txt", { gzip: true })
    return { info: written(info), same: back === text, size: await run("stat -c %s js/gz.txt") }
  })

  await step("write_array", async () => {
    const infos = await sbx.files.write([
      { path: "js/many/one.txt", data: "1" },
      { path: "/home/user/js/many/two.bin", data: enc.encode("2").buffer },
      { path: "js/many/deep/three.txt", data: new Blob(["3"]) },
    ])
    return { infos: infos.map(written), content: await run("cat js/many/one.txt js/many/two.bin js/many/deep/three.txt") }
  })

  await step("write_array_empty", async () => sbx.files.write([]))

  await step("write_overwrite", async () => {
    await sbx.files.write("js/over.txt", "a long first version")
    await run("chmod 600 js/over.txt")
    await sbx.files.write("js/over.txt", "short")
    return run("cat js/over.txt; echo; stat -c '%a %U' js/over.txt")
  })

  await step("write_duplicate_paths", async () =>
    outcome(
      sbx.files.write([
        { path: "js/dup.txt", data: "first" },
        { path: "js/dup.txt", data: "second" },
      ]),
    ),
  )

  await step("write_as_root", async () => {
    const info = await sbx.files.write("/root/js-root.txt", "r", { user: "root" })
    return { info: written(info), owner: await run("stat -c %U /root/js-root.txt", { user: "root" }) }
  })

  await step("write_unknown_user", async () => outcome(sbx.files.write("x.txt", "x", { user: "nobody-here" })))

  // --- read -------------------------------------------------------------------------------

  await step("read_formats", async () => {
    const text = await sbx.files.read("js/a.txt")
    const bytes = await sbx.files.read("js/bytes.bin", { format: "bytes" })
    const blob = await sbx.files.read("js/blob.txt", { format: "blob" })
    const stream = await sbx.files.read("js/bytes.bin", { format: "stream" })
    const streamed = await collect(stream)
    const equal = (a) => a.length === ALL_BYTES.length && a.every((v, i) => v === ALL_BYTES[i])
    return {
      text,
      bytesIsUint8Array: bytes instanceof Uint8Array,
      bytesEqual: equal(bytes),
      blob: { isBlob: blob instanceof Blob, size: blob.size, text: await blob.text() },
      streamEqual: equal(streamed),
    }
  })

  await step("read_empty", async () => {
    await run("touch js/empty-touched")
    await sbx.files.write("js/empty-written", "")
    const out = {}
    for (const name of ["empty-touched", "empty-written"]) {
      const path = `js/${name}`
      out[name] = {
        text: await sbx.files.read(path),
        bytes: (await sbx.files.read(path, { format: "bytes" })).length,
        blob: (await sbx.files.read(path, { format: "blob" })).size,
        stream: (await collect(await sbx.files.read(path, { format: "stream" }))).length,
        size: (await sbx.files.getInfo(path)).size,
      }
    }
    return out
  })

  await step("read_large_stream", async () => {
    // 24 MiB written by a command; streamed back in chunks.
    await run("head -c 25165824 /dev/urandom > js/large.bin")
    const expected = (await run("sha256sum js/large.bin | cut -c1-64")).trim()
    const stream = await sbx.files.read("js/large.bin", { format: "stream" })
    const reader = stream.getReader()
    const hash = (await import("node:crypto")).createHash("sha256")
    let size = 0
    let chunks = 0
    for (;;) {
      const { done, value } = await reader.read()
      if (done) break
      hash.update(value)
      size += value.length
      chunks += 1
    }
    return { size, same: hash.digest("hex") === expected, manyChunks: chunks > 1 }
  })

  await step("read_errors", async () => ({
    missing: await outcome(sbx.files.read("js/does-not-exist.txt")),
    missingStream: await outcome(sbx.files.read("js/does-not-exist.txt", { format: "stream" })),
    directory: await outcome(sbx.files.read("js")),
    unknownUser: await outcome(sbx.files.read("js/a.txt", { user: "nobody-here" })),
  }))

  // --- filesystem RPCs --------------------------------------------------------------------

  await step("list_depth", async () => {
    await run("mkdir -p js/tree/b/c && touch js/tree/a.txt js/tree/b/b.txt js/tree/b/c/c.txt js/tree/z.txt")
    const pick = (entries) => entries.map((e) => [e.path, e.type])
    return {
      default: pick(await sbx.files.list("js/tree")),
      depth1: pick(await sbx.files.list("js/tree", { depth: 1 })),
      depth2: pick(await sbx.files.list("/home/user/js/tree", { depth: 2 })),
      depth5: pick(await sbx.files.list("~/js/tree", { depth: 5 })),
      depth0: await outcome(sbx.files.list("js/tree", { depth: 0 })),
    }
  })

  await step("list_entry", async () => {
    const [e] = await sbx.files.list("js/many/deep")
    return entry(e)
  })

  await step("exists", async () => ({
    file: await sbx.files.exists("js/a.txt"),
    dir: await sbx.files.exists("/home/user/js"),
    missing: await sbx.files.exists("js/nope"),
  }))

  await step("get_info", async () => {
    await run("ln -s /home/user/js/a.txt js/link-to-a && ln -s many js/link-to-dir && sudo touch /opt/by-root")
    return {
      file: entry(await sbx.files.getInfo("js/a.txt")),
      dir: entry(await sbx.files.getInfo("js/many")),
      linkToFile: entry(await sbx.files.getInfo("js/link-to-a")),
      linkToDir: entry(await sbx.files.getInfo("js/link-to-dir")),
      rootOwned: entry(await sbx.files.getInfo("/opt/by-root")),
      now: new Date().toISOString(),
    }
  })

  await step("make_dir", async () => ({
    created: await sbx.files.makeDir("js/made/deep/er"),
    again: await sbx.files.makeDir("js/made/deep/er"),
    parent: await sbx.files.makeDir("js/made"),
    stat: await run("stat -c '%a %U %G' js/made js/made/deep/er"),
    overAFile: await outcome(sbx.files.makeDir("js/a.txt")),
  }))

  await step("rename", async () => {
    await sbx.files.write("js/mv/src.txt", "moved content")
    const moved = entry(await sbx.files.rename("js/mv/src.txt", "js/mv/new/parents/dst.txt"))
    return {
      moved,
      oldExists: await sbx.files.exists("js/mv/src.txt"),
      content: await sbx.files.read("js/mv/new/parents/dst.txt"),
      dirMoved: entry(await sbx.files.rename("js/mv/new", "/home/user/js/mv/renamed-dir")),
      missing: await outcome(sbx.files.rename("js/mv/nope", "js/mv/nope2")),
    }
  })

  await step("remove", async () => {
    await sbx.files.write("js/rm/a/b/c.txt", "c")
    await sbx.files.write("js/rm/file.txt", "f")
    await sbx.files.remove("js/rm/file.txt")
    const fileGone = !(await sbx.files.exists("js/rm/file.txt"))
    await sbx.files.remove("js/rm")
    return {
      fileGone,
      treeGone: !(await sbx.files.exists("js/rm")),
      missing: await outcome(sbx.files.remove("js/rm/never-was")),
    }
  })

  await step("metadata", async () => {
    const info = await sbx.files.write("js/meta.txt", "m", { metadata: { Author: "me", purpose: "test" } })
    const stat = entry(await sbx.files.getInfo("js/meta.txt"))
    const listed = (await sbx.files.list("js")).find((e) => e.name === "meta.txt")
    const arr = await sbx.files.write(
      [
        { path: "js/meta-a.txt", data: "a" },
        { path: "js/meta-b.txt", data: "b" },
      ],
      { metadata: { batch: "1" } },
    )
    const octet = await sbx.files.write("js/meta.txt", "m2", { metadata: { stage: "2" }, useOctetStream: true })
    const cleared = await sbx.files.write("js/meta.txt", "m3")
    return {
      written: info.metadata ?? null,
      stat: stat.metadata,
      listed: listed?.metadata ?? null,
      array: arr.map((w) => w.metadata ?? null),
      arrayStat: (await sbx.files.getInfo("js/meta-b.txt")).metadata ?? null,
      octet: octet.metadata ?? null,
      cleared: cleared.metadata ?? null,
      clearedStat: (await sbx.files.getInfo("js/meta.txt")).metadata ?? null,
      badKey: await outcome(sbx.files.write("js/meta-bad.txt", "x", { metadata: { "bad key": "v" } })),
    }
  })

  await step("errors", async () => ({
    getInfoMissing: await outcome(sbx.files.getInfo("js/nope")),
    listMissing: await outcome(sbx.files.list("js/nope")),
    listFile: await outcome(sbx.files.list("js/a.txt")),
    listUnknownUser: await outcome(sbx.files.list("js", { user: "nobody-here" })),
  }))

  // --- signed URLs with plain fetch -------------------------------------------------------

  await step("download_url", async () => {
    await sbx.files.write("js/signed.txt", "signed content")
    const plain = await sbx.downloadUrl("js/signed.txt")
    const withUser = await sbx.downloadUrl("js/signed.txt", { user: "user", useSignatureExpiration: 120 })
    const expired = await sbx.downloadUrl("js/signed.txt", { useSignatureExpiration: -120 })
    const tampered = plain.replace("signed.txt", "a.txt")
    const missing = await sbx.downloadUrl("js/not-there.txt")
    return {
      url: plain,
      plain: await plainFetch(plain),
      withUser: await plainFetch(withUser),
      expired: await plainFetch(expired),
      tampered: await plainFetch(tampered),
      missing: await plainFetch(missing),
    }
  })

  await step("upload_url", async () => {
    const url = await sbx.uploadUrl("js/up/via-url.txt", { useSignatureExpiration: 120 })
    const form = new FormData()
    form.append("file", new Blob(["posted via url"]), "ignored-name.txt")
    const multipart = await plainFetch(url, { method: "POST", body: form })
    const rawUrl = await sbx.uploadUrl("js/up/raw.bin")
    const raw = await plainFetch(rawUrl, {
      method: "POST",
      headers: { "Content-Type": "application/octet-stream" },
      body: ALL_BYTES,
    })
    const expiredUrl = await sbx.uploadUrl("js/up/expired.txt", { useSignatureExpiration: -1 })
    const expiredForm = new FormData()
    expiredForm.append("file", new Blob(["never"]), "expired.txt")
    const expired = await plainFetch(expiredUrl, { method: "POST", body: expiredForm })
    // A read signature does not allow a write.
    const readUrl = await sbx.downloadUrl("js/up/raw.bin")
    const wrongOp = await plainFetch(readUrl, {
      method: "POST",
      headers: { "Content-Type": "application/octet-stream" },
      body: "overwritten",
    })
    return {
      multipart,
      raw,
      expired,
      wrongOp,
      content: await sbx.files.read("js/up/via-url.txt"),
      rawSum: (await run("sha256sum js/up/raw.bin | cut -c1-64")).trim(),
      expiredExists: await sbx.files.exists("js/up/expired.txt"),
    }
  })

  // --- a full disk ------------------------------------------------------------------------

  await step("no_space", async () => {
    // Fill the sandbox's disk but for ~8 MiB, then upload 32 MiB each way.
    const full = await sandboxes.create({ metadata: { suite: "js-files-full" } })
    await full.commands.run("fallocate -l $(( $(df -k --output=avail / | tail -1) - 8192 ))K fill")
    const chunk = new Uint8Array(32 << 20).fill(7)
    const multipart = await outcome(full.files.write("big-multipart.bin", chunk.buffer))
    const stream = await outcome(full.files.write("big-stream.bin", new Blob([chunk]).stream()))
    await full.files.remove("fill")
    const after = written(await full.files.write("after.bin", chunk.buffer))
    return { multipart, stream, after }
  })
})
