"""A stand-in for AWS IAM's policy simulator: an HTTP server on 127.0.0.1 that answers the IAM Query API's
SimulatePrincipalPolicy in AWS's XML, and proxies every other request to moto (which lacks that one action).

Reached like any endpoint (AWS_ENDPOINT_URL_IAM), never by patching a client. Its decision is its own, small and
independent of rbacbridge's evaluator: the documents it is given (a role's policies, as raw text) and the request's
ResourcePolicy; an explicit Deny statement wins, else an Allow, else implicitDeny; Action and Resource by fnmatch.
The matched statement's position (1-based line and column, end inclusive) is found in the raw text. `deny=True`
answers AccessDenied (HTTP 403) instead, as AWS does to an operator without iam:SimulatePrincipalPolicy."""

from __future__ import annotations

import fnmatch
import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

NS = "https://iam.amazonaws.com/doc/2010-05-08/"


def statement_spans(text: str) -> list[tuple[dict, int, int]]:
    """Each statement of a policy's raw text with its start offset and inclusive end offset."""
    decoder = json.JSONDecoder()
    at = text.index("[", text.index('"Statement"')) + 1
    out = []
    while True:
        while text[at] in " \t\r\n,":
            at += 1
        if text[at] == "]":
            return out
        statement, end = decoder.raw_decode(text, at)
        out.append((statement, at, end - 1))
        at = end


def position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _listed(value) -> list[str]:
    return value if isinstance(value, list) else [value]


class SimulatorStandIn:
    def __init__(self, moto_url: str, documents: dict[str, tuple[str, str, str]] | None = None, deny: bool = False,
                 throttle: bool = False):
        """`documents`: role ARN -> [(policy id, policy type, raw text)] it decides with; `throttle`: every
        SimulatePrincipalPolicy answered Throttling (HTTP 400), as AWS does to a caller over its rate."""
        self.moto_url, self.documents, self.deny, self.throttle = moto_url, documents or {}, deny, throttle
        self.simulations: list[dict[str, list[str]]] = []
        self.proxied: list[str] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                params = parse_qs(body.decode(), keep_blank_values=True)
                if params.get("Action") == ["SimulatePrincipalPolicy"]:
                    standin.simulations.append(params)
                    status, answer = standin.answer(params)
                    data = answer.encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "text/xml")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                standin.proxied.append((params.get("Action") or ["?"])[0])
                # the Host header as signed: moto checks SigV4 signatures while IAM enforcement is on
                headers = {k: v for k, v in self.headers.items() if k.lower() != "content-length"}
                request = urllib.request.Request(standin.moto_url + self.path, data=body, headers=headers, method="POST")
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        status, data, kind = response.status, response.read(), response.headers.get("Content-Type", "text/xml")
                except urllib.error.HTTPError as exc:
                    status, data, kind = exc.code, exc.read(), exc.headers.get("Content-Type", "text/xml")
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def answer(self, params: dict[str, list[str]]) -> tuple[int, str]:
        if self.throttle:
            return 400, (f'<ErrorResponse xmlns="{NS}"><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate '
                         "exceeded</Message></Error><RequestId>standin-3</RequestId></ErrorResponse>")
        if self.deny:
            return 403, (f'<ErrorResponse xmlns="{NS}"><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>User: '
                         "arn:aws:iam::123456789012:user/operator is not authorized to perform: iam:SimulatePrincipalPolicy"
                         "</Message></Error><RequestId>standin-1</RequestId></ErrorResponse>")
        source = params["PolicySourceArn"][0]
        documents = list(self.documents.get(source, []))
        if params.get("ResourcePolicy"):
            documents.append(("ResourcePolicy", "resource", params["ResourcePolicy"][0]))
        actions = [v[0] for k, v in sorted(params.items()) if k.startswith("ActionNames.member.")]
        resources = [v[0] for k, v in sorted(params.items()) if k.startswith("ResourceArns.member.")] or ["*"]
        members = []
        for action in actions:
            for resource in resources:
                decision, matched = self.decide(documents, action, resource)
                members.append(self.member(action, resource, decision, matched))
        return 200, (f'<SimulatePrincipalPolicyResponse xmlns="{NS}"><SimulatePrincipalPolicyResult><IsTruncated>false'
                     f'</IsTruncated><EvaluationResults>{"".join(members)}</EvaluationResults></SimulatePrincipalPolicyResult>'
                     "<ResponseMetadata><RequestId>standin-2</RequestId></ResponseMetadata></SimulatePrincipalPolicyResponse>")

    @staticmethod
    def decide(documents, action: str, resource: str):
        allow = None
        for policy_id, kind, text in documents:
            for statement, start, end in statement_spans(text):
                if "Condition" in statement:
                    continue
                if not any(fnmatch.fnmatch(action.lower(), a.lower()) for a in _listed(statement.get("Action", []))):
                    continue
                if not any(fnmatch.fnmatchcase(resource, r) for r in _listed(statement.get("Resource", []))):
                    continue
                hit = (policy_id, kind, position(text, start), position(text, end))
                if statement.get("Effect") == "Deny":
                    return "explicitDeny", hit
                allow = allow or hit
        return ("allowed", allow) if allow else ("implicitDeny", None)

    @staticmethod
    def member(action, resource, decision, matched) -> str:
        statements = ""
        if matched:
            policy_id, kind, (l1, c1), (l2, c2) = matched
            statements = (f"<member><SourcePolicyId>{escape(policy_id)}</SourcePolicyId><SourcePolicyType>{kind}"
                          f"</SourcePolicyType><StartPosition><Line>{l1}</Line><Column>{c1}</Column></StartPosition>"
                          f"<EndPosition><Line>{l2}</Line><Column>{c2}</Column></EndPosition></member>")
        return (f"<member><EvalActionName>{escape(action)}</EvalActionName><EvalResourceName>{escape(resource)}"
                f"</EvalResourceName><EvalDecision>{decision}</EvalDecision><MatchedStatements>{statements}"
                "</MatchedStatements><MissingContextValues/></member>")
