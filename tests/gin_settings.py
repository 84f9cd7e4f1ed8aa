"""What gin parameters resolve to after strict parsing, macros followed (shared by tests)."""

import gin

from tfkd import config


def resolve(value):
    """Follows macro references, also inside lists and tuples."""
    while isinstance(value, gin.config.ConfigurableReference) and value.selector == "gin.macro":
        value = gin.query_parameter("%" + value.scoped_selector.split("/")[0])
    if isinstance(value, list | tuple):
        return [resolve(v) for v in value]
    return value


def gin_settings(files, bindings, keys, default=None):
    """`[value of each key]` (a parameter or %MACRO) after parsing `files` and `bindings` strictly
    (as bin/train does); `default(key)` gives the value of an unbound key (else it raises)."""
    gin.clear_config()
    try:
        config.parse_gin(files, bindings)
        out = []
        for key in keys:
            try:
                out.append(resolve(gin.query_parameter(key)))
            except ValueError:
                if default is None:
                    raise
                out.append(default(key))
        return out
    finally:
        gin.clear_config()
