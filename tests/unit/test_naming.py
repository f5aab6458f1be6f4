"""One naming style: every function and method defined in ate/ is snake_case, except the
names a framework calls us by (Twisted, Autobahn, the ssl module)."""

from __future__ import annotations

import ast
import pathlib
import re

ATE = pathlib.Path(__file__).resolve().parents[2] / "ate"

#: names that Twisted, Autobahn or the stdlib call on our objects
FRAMEWORK = frozenset({
    "startService", "stopService", "privilegedStartService", "makeService", "postOptions",
    "parseArgs", "connectionMade", "connectionLost", "dataReceived", "lineReceived",
    "lineLengthExceeded", "buildProtocol", "clientConnectionFailed", "clientConnectionLost",
    "stopProducing", "pauseProducing", "resumeProducing", "logPrefix", "doRead", "doWrite",
    "getHeader", "getChild", "getChildWithDefault", "render_GET", "render_POST",
    "onConnect", "onOpen", "onMessage", "onClose", "whenConnected", "wrapSocket",
})

SNAKE = re.compile(r"^_{0,2}[a-z][a-z0-9_]*_{0,2}$")


def offenders(tree: ast.AST, where: str) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.name not in FRAMEWORK and not SNAKE.match(node.name):
                found.append(f"{where}:{node.lineno} {node.name}")
    return found


def test_every_function_in_ate_is_snake_case() -> None:
    found: list[str] = []
    for path in sorted(ATE.rglob("*.py")):
        found += offenders(ast.parse(path.read_text()), str(path.relative_to(ATE.parent)))
    assert found == []


def test_the_check_sees_a_camel_case_method() -> None:
    tree = ast.parse("class A:\n    def partDone(self):\n        pass\n    def part_done(self):\n"
                     "        pass\n")
    assert offenders(tree, "x") == ["x:2 partDone"]
