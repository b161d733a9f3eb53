"""Code run silently in every Python kernel at start: E2B's extra IPython formatters (§5.6).

``e2b/data``: a pandas DataFrame as ``to_dict(orient="list")`` with timestamps ISO-formatted.
``e2b/chart``: a matplotlib Figure through ``e2b_charts.chart_figure_to_dict``.
``application/json``: plain dicts and lists. Every piece is skipped if its library is missing.
Not a formatter, but per-start Python setup too: a child forked by a cell ends with the cell.
"""

import json as _json

PYTHON_SETUP = r'''
def __shoal_setup():
    import json as _json
    from IPython import get_ipython
    from IPython.core.formatters import BaseFormatter
    from traitlets import ObjectName, Unicode

    ip = get_ipython()
    if ip is None:
        return
    formatters = ip.display_formatter.formatters

    class _E2BFormatter(BaseFormatter):
        print_method = ObjectName("_repr_e2b_")
        _return_type = (dict, list)

    class E2BDataFormatter(_E2BFormatter):
        format_type = Unicode("e2b/data")

    class E2BChartFormatter(_E2BFormatter):
        """Checks the type itself: matplotlib's inline backend pops every Figure printer."""

        format_type = Unicode("e2b/chart")

        def __call__(self, obj):
            import sys

            figure = sys.modules.get("matplotlib.figure")
            if not self.enabled or figure is None or not isinstance(obj, figure.Figure):
                return None
            return chart(obj)

    def dataframe(df):
        import pandas

        out = df.to_dict(orient="list")
        for key, values in out.items():
            out[key] = [v.isoformat() if isinstance(v, pandas.Timestamp) else v for v in values]
        return _json.loads(_json.dumps(out, default=str))

    def chart(figure):
        try:
            from e2b_charts import chart_figure_to_dict
        except ImportError:
            return None
        try:
            return chart_figure_to_dict(figure)
        except Exception:
            return {}

    data = E2BDataFormatter(parent=ip.display_formatter)
    for module in ("pandas", "pandas.core.frame"):  # pandas 3 reports "pandas"
        data.for_type_by_name(module, "DataFrame", dataframe)
    formatters["e2b/data"] = data
    formatters["e2b/chart"] = E2BChartFormatter(parent=ip.display_formatter)

    def plain_json(obj):
        try:
            return _json.loads(_json.dumps(obj))
        except (TypeError, ValueError):
            return None

    formatters["application/json"].for_type(dict, plain_json)
    formatters["application/json"].for_type(list, plain_json)

    import os

    kernel_pid = os.getpid()

    def end_forked_child(result):
        """A child the cell forked (os.fork()) and that runs to the end of the cell would
        go on as a second kernel on the same sockets, spinning a CPU for good: end it."""
        if os.getpid() != kernel_pid:
            import sys

            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(0)

    ip.events.register("post_run_cell", end_forked_child)


__shoal_setup()
del __shoal_setup
'''


#: display_data markers the JS/TS setup uses to hand over what tslab only prints
TSLAB_MAIN_RESULT = "application/x-shoal-main-result"
TSLAB_ERROR = "application/x-shoal-error"

# tslab (the JS/TS kernel) prints a cell's last expression with ``console.log`` and a thrown
# error with ``console.error``, both from its executor. This hooks the process's stdout/stderr
# ``write`` (tslab reassigns it on every execution, so as an accessor) and turns writes that
# come straight from the executor's ``execute`` into display data with a marker, which the
# server maps to a main result and an ``error`` (e2b-compat.md §5.2). Run through an indirect
# ``eval`` so that the same text type-checks in the TypeScript kernel.
_TSLAB_HOOK = r"""
(function (require) {
  if (globalThis.__shoalTslabHook) return;
  var key = Object.keys(require.cache || {}).find(function (k) {
    return /[\\/]tslab[\\/]dist[\\/]jupyter\.js$/.test(k);
  });
  if (!key) return;
  var jupyter = require.cache[key].exports;
  globalThis.__shoalTslabHook = true;
  function fromExecute() {
    var frames = (new Error().stack || "").split("\n").slice(1);
    for (var i = 0; i < frames.length; i++) {
      var f = frames[i];
      if (/node:|fromExecute|__shoalWrite/.test(f)) continue;
      return /\bexecute \(.*[\\/]tslab[\\/]dist[\\/]executor\.js:/.test(f);
    }
    return false;
  }
  function asError(text) {
    var lines = text.replace(/\s+$/, "").split("\n");
    for (var i = 0; i < lines.length; i++) {
      var m = /^([A-Za-z_$][\w$]*)(?: \[[^\]]*\])?: (.*)$/.exec(lines[i]);
      if (m && (i + 1 === lines.length || /^\s+at /.test(lines[i + 1]))) {
        return {name: m[1], value: m[2], traceback: text};
      }
    }
    return {name: "Error", value: lines.join("\n"), traceback: text};
  }
  function hook(stream, convert) {
    var inner = stream.write;
    var wrapper = function __shoalWrite(chunk) {
      if (typeof chunk === "string" && jupyter.lastWriteDisplayData && fromExecute()) {
        jupyter.lastWriteDisplayData({data: convert(chunk), metadata: {}}, false);
        return true;
      }
      return inner.apply(stream, arguments);
    };
    Object.defineProperty(stream, "write", {
      configurable: true,
      get: function () { return wrapper; },
      set: function (value) { inner = value; }
    });
  }
  hook(process.stdout, function (text) {
    return {"text/plain": text.replace(/\n$/, ""), "MAIN": true};
  });
  hook(process.stderr, function (text) { return {"ERROR": asError(text)}; });
})
""".replace('"MAIN"', f'"{TSLAB_MAIN_RESULT}"').replace('"ERROR"', f'"{TSLAB_ERROR}"')

JS_SETUP = f"globalThis.eval({_json.dumps(_TSLAB_HOOK)})(require);"
