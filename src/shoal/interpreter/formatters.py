"""Code run silently in every Python kernel at start: E2B's extra IPython formatters (§5.6).

``e2b/data``: a pandas DataFrame as ``to_dict(orient="list")`` with timestamps ISO-formatted.
``e2b/chart``: a matplotlib Figure through ``e2b_charts.chart_figure_to_dict``.
``application/json``: plain dicts and lists. Every piece is skipped if its library is missing.
"""

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


__shoal_setup()
del __shoal_setup
'''
