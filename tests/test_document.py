from __future__ import annotations

import gzip
from typing import Any

import pytest
from mitmproxy.test import tutils

from airlock.pipeline.document import (
    MAX_HEAD,
    MAX_HEADER_FIELDS,
    MAX_NODES,
    MAX_QUERY_FIELDS,
    build_document,
    parse_form,
)


def request(content: bytes, content_type: str, path: str = "/v1/charges", method: str = "POST"):
    return tutils.treq(
        method=method.encode(),
        host="API.Stripe.com",
        port=443,
        scheme=b"https",
        authority=b"",
        path=path.encode(),
        headers=[(b"Content-Type", content_type.encode()), (b"X-Trace", b"1")],
        content=content,
    )


def test_stripe_bracket_form_becomes_nested_objects_and_lists() -> None:
    body = (
        b"amount=2000&currency=usd&metadata[order_id]=6735&metadata[note]=a%20b"
        b"&expand[0]=customer&expand[1]=invoice&items[0][price]=p_1&items[0][quantity]=2"
        b"&items[1][price]=p_2"
    )
    document = build_document(request(body, "application/x-www-form-urlencoded"), "agent-7")

    assert document["body_format"] == "form"
    assert document["body"] == {
        "amount": "2000",
        "currency": "usd",
        "metadata": {"order_id": "6735", "note": "a b"},
        "expand": ["customer", "invoice"],
        "items": [{"price": "p_1", "quantity": "2"}, {"price": "p_2"}],
    }
    assert document["agent"] == "agent-7"


def test_form_appends_and_repeated_keys_keep_order() -> None:
    # repeated plain keys are lists only where that is the vendor's notation (Twilio's)
    assert parse_form("expand[]=a&expand[]=b&tag=x&tag=y&tag=z", lists=True) == {
        "expand": ["a", "b"],
        "tag": ["x", "y", "z"],
    }
    assert parse_form("expand[]=a&expand[]=b&Tag.member.1=x&Tag.member.2=y") == {
        "expand": ["a", "b"],
        "Tag": ["x", "y"],
    }


def test_form_with_only_numeric_top_level_keys_stays_an_object() -> None:
    assert parse_form("0=a&1=b") == {"0": "a", "1": "b"}


def test_huge_form_index_is_not_turned_into_a_list() -> None:
    assert parse_form("items[99999999]=x") == {"items": {"99999999": "x"}}


def test_json_body_is_parsed() -> None:
    document = build_document(
        request(b'{"channel": "C1", "text": "hi"}', "application/json; charset=utf-8"), "a"
    )
    assert document["body"] == {"channel": "C1", "text": "hi"}
    assert document["body_format"] == "json"
    assert document["body_size"] == 31


def test_body_that_is_not_what_it_claims_is_kept_as_text_with_the_reason() -> None:
    document = build_document(request(b"{not json", "application/json"), "a")
    assert document["body"] == "{not json"
    assert document["body_format"] == "text"
    assert "not valid JSON" in document["body_error"]


def test_other_content_is_text_and_empty_is_none() -> None:
    assert build_document(request(b"<a/>", "application/octet-stream"), "a")["body"] == "<a/>"
    empty = build_document(request(b"", "", method="GET"), "a")
    assert (empty["body"], empty["body_format"]) == (None, "empty")


def test_request_fields_are_normalised() -> None:
    document = build_document(
        request(b"", "", path="/v1/customers/cus%201?expand=a&expand=b&limit=3", method="get"),
        "a",
    )
    assert document["method"] == "GET"
    assert document["host"] == "api.stripe.com"
    assert document["port"] == 443
    assert document["scheme"] == "https"
    assert document["path"] == "/v1/customers/cus 1"
    assert document["query"] == {"expand": ["a", "b"], "limit": ["3"]}
    assert document["headers"]["x-trace"] == "1"
    assert "X-Trace" not in document["headers"]


def test_repeated_headers_are_joined() -> None:
    flow_request = request(b"", "text/plain")
    flow_request.headers.add("X-Trace", "2")
    assert build_document(flow_request, "a")["headers"]["x-trace"] == "1, 2"


def test_paths_are_normalised_like_servers_do() -> None:
    from airlock.pipeline.document import normalise_path

    assert normalise_path("//v1//charges") == "/v1/charges"
    assert normalise_path("/v1/./charges") == "/v1/charges"
    assert normalise_path("/v1/customers/../charges/") == "/v1/charges/"
    assert normalise_path("/../../etc") == "/etc"
    assert normalise_path("") == "/"


def test_host_is_where_the_request_goes_not_the_host_header() -> None:
    flow_request = request(b"", "text/plain")
    flow_request.headers["Host"] = "evil.example"
    document = build_document(flow_request, "a")
    assert document["host"] == "api.stripe.com"
    assert document["headers"]["host"] == "evil.example"


def test_many_appends_parse_in_order() -> None:
    form = parse_form("&".join(f"a[]={i}" for i in range(9000)))
    assert form["a"] == [str(i) for i in range(9000)]


def test_too_many_form_fields_leave_the_body_unparsed() -> None:
    body = "&".join(f"f{i}=1" for i in range(10_001)).encode()
    document = build_document(request(body, "application/x-www-form-urlencoded"), "a")
    assert document["body_format"] == "text"
    assert "form body not parsed" in document["body_error"]


def test_nan_is_not_a_number_a_policy_can_compare() -> None:
    document = build_document(request(b'{"amount": NaN}', "application/json"), "a")
    assert document["body_format"] == "text"
    assert "NaN is not a JSON number" in document["body_error"]


def test_undecodable_header_bytes_are_replaced() -> None:
    flow_request = request(b"", "text/plain")
    flow_request.headers.fields = (*flow_request.headers.fields, (b"x-odd", b"caf\xe9"))
    assert build_document(flow_request, "a")["headers"]["x-odd"] == "caf\ufffd"


def test_aws_query_protocol_lists_and_members_become_lists() -> None:
    form = parse_form(
        "Action=RunInstances&MaxCount=3&InstanceId.1=i-a&InstanceId.2=i-b"
        "&TagSpecification.1.ResourceType=instance&TagSpecification.1.Tag.1.Key=team"
        "&TagSpecification.1.Tag.1.Value=ml&Tags.member.1.Key=k&LaunchTemplate.Version=2"
    )
    assert form == {
        "Action": "RunInstances",
        "MaxCount": "3",
        "InstanceId": ["i-a", "i-b"],
        "TagSpecification": [{"ResourceType": "instance", "Tag": [{"Key": "team", "Value": "ml"}]}],
        "Tags": [{"Key": "k"}],
        "LaunchTemplate": {"Version": "2"},
    }


def test_xml_bodies_become_objects_with_lists_for_repeats() -> None:
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?>'
        b'<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<Object><Key>a.txt</Key></Object><Object><Key>b.txt</Key></Object>"
        b"<Quiet>true</Quiet></Delete>"
    )
    document = build_document(request(body, "application/xml"), "a")
    assert document["body_format"] == "xml"
    assert document["body"] == {
        "Delete": {"Object": [{"Key": "a.txt"}, {"Key": "b.txt"}], "Quiet": "true"}
    }


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-16-be", "utf-16-le"])
def test_xml_with_entities_is_not_parsed(encoding: str) -> None:
    """Refused by the parser as it meets the DTD: in UTF-16 no byte says `<!DOCTYPE` (802 bytes
    of nested entities expanded to 8 MB)."""
    entities = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 6))
    text = '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY l0 "lol">' + entities + "]><l>&l5;</l>"
    bom = {"utf-16-be": b"\xfe\xff", "utf-16-le": b"\xff\xfe"}.get(encoding, b"")
    bomb = bom + text.encode(encoding)
    document = build_document(request(bomb, "text/xml"), "a")
    assert document["body_format"] == "text"
    assert "DTD" in document["body_error"]


def test_bodies_without_a_content_type_are_sniffed() -> None:
    xml = build_document(request(b"<Delete><Object><Key>k</Key></Object></Delete>", ""), "a")
    assert (xml["body_format"], xml["body"]) == ("xml", {"Delete": {"Object": {"Key": "k"}}})
    payload = build_document(request(b'{"dry": true}', ""), "a")
    assert (payload["body_format"], payload["body"]) == ("json", {"dry": True})
    assert build_document(request(b"plain", ""), "a")["body_format"] == "text"


def test_a_compressed_body_is_read_as_the_api_reads_it() -> None:
    compressed = request(gzip.compress(b'{"amount": 900}'), "application/json")
    compressed.headers["Content-Encoding"] = "gzip"
    assert build_document(compressed, "a")["body"] == {"amount": 900}


def variant(body: bytes, content_type: str | None, **headers: str) -> Any:
    built = request(body, content_type or "")
    if content_type is None:
        del built.headers["Content-Type"]
    for name, value in headers.items():
        built.headers[name.replace("_", "-")] = value
    return build_document(built, "a")


@pytest.mark.parametrize(
    ("body", "content_type", "headers", "why"),
    [
        # Judged as sent, each would be judged without its parameters while an upstream that
        # reads it otherwise acts on them.
        (b'{"amount": 900}', "application/json", {"Content_Encoding": "gzip"}, "does not decode"),
        (gzip.compress(b"amount=900", mtime=0) + b"\x00x", "application/x-www-form-urlencoded",
         {"Content_Encoding": "gzip"}, "does not decode"),
        (gzip.compress(gzip.compress(b"amount=900", mtime=0), mtime=0),
         "application/x-www-form-urlencoded", {"Content_Encoding": "gzip, gzip"},
         "not one Airlock decodes"),
        (b"amount=900", "application/x-www-form-urlencoded", {"Content_Encoding": "compress"},
         "not one Airlock decodes"),
        (b"amount=900", "application/x-www-form-urlencoded,json", {}, "several media types"),
        (b'{"amount": 1, "amount": 900}', "application/json", {}, "repeats the key 'amount'"),
        (b'{"a": {"amount": 1, "amount": 900}}', None, {}, "repeats the key 'amount'"),
        # UTF-7 (as an MCP server built on the TypeScript SDK decodes it): a method in a string
        (b'{"method":"tools/list","params":{"cursor":"+ACIALAAi-method+ACIAOgAi-tools/call"}}',
         "application/json; charset=utf-7", {}, "charset 'utf-7'"),
        (b'\xff\xfe{\x00}\x00', 'application/json; charset="UTF-16"', {}, "charset 'utf-16'"),
        (b"amount=900", "application/x-www-form-urlencoded; charset=ISO-8859-1", {},
         "charset 'iso-8859-1'"),
    ],
)  # fmt: skip
def test_a_body_read_otherwise_than_it_claims_is_refused(
    body: bytes, content_type: str | None, headers: dict[str, str], why: str
) -> None:
    document = variant(body, content_type, **headers)
    assert why in document["request_error"]
    assert "amount" not in str(document["body"])  # recorded by size and hash, not judged


def test_a_body_without_content_type_is_read_as_the_form_it_looks_like() -> None:
    assert variant(b"amount=900&currency=usd", None)["body"] == {
        "amount": "900",
        "currency": "usd",
    }
    assert variant(b"plain text, not a form", None)["body"] == "plain text, not a form"
    assert variant(b"x", "application/json", Content_Encoding="identity")["body_error"]


def test_a_form_requests_query_fields_count_as_its_forms() -> None:
    """Form servers merge the query into the form: the amount in the URL is judged."""
    form = "application/x-www-form-urlencoded"
    empty = build_document(request(b"", form, path="/v1/charges?amount=5000000&currency=usd"), "a")
    assert empty["body"] == {"amount": "5000000", "currency": "usd"}
    both = request(b"amount=5", form, path="/v1/charges?amount=9&expand[0]=x")
    assert "both send amount" in build_document(both, "a")["request_error"]  # Stripe: which?
    both.host = "api.example.com"  # a form server elsewhere (Rack, PHP): the form's own wins
    assert build_document(both, "a")["body"] == {"amount": "5", "expand": ["x"]}
    # elsewhere a JSON body is the API's whole input; a form API (Stripe here) reads the query
    # beside it, as it does beside a text body (H7)
    elsewhere = request(b'{"a": 1}', "application/json", path="/p?amount=9")
    elsewhere.host = "api.example.com"
    assert build_document(elsewhere, "a")["body"] == {"a": 1}
    json_body = build_document(request(b'{"a": 1}', "application/json", path="/p?amount=9"), "a")
    assert json_body["body"] == {"amount": "9", "a": 1}
    text = build_document(request(b"x", "text/plain", path="/v1/charges?amount=9"), "a")
    assert text["body"] == {"amount": "9"} and "only the query" in text["body_error"]


def test_an_answer_that_repeats_a_key_is_still_read_for_its_identifiers() -> None:
    from airlock.pipeline.document import Unreadable, parse_body
    from airlock.pipeline.outcome import response_document

    answer = response_document(200, {"content-type": "application/json"}, b'{"id": 1, "id": 2}')
    assert answer["response"]["body"] == {"id": 2}
    with pytest.raises(Unreadable, match="repeats the key 'id'"):  # a request's is refused
        parse_body("application/json", b'{"id": 1, "id": 2}')


def test_a_head_past_the_limits_is_refused() -> None:
    """mitmproxy's HTTP/1 reader takes a head of any size; 50,000 fields cost 10 s."""
    many = request(b"", "text/plain", method="GET")
    many.headers.fields += tuple((b"x-a", b"v") for _ in range(MAX_HEADER_FIELDS))
    assert "header fields" in build_document(many, "a")["request_error"]
    assert build_document(many, "a")["headers"] == {}  # not read
    long = request(b"", "text/plain", method="GET", path="/v1/charges?q=" + "x" * MAX_HEAD)
    assert "URL and headers" in build_document(long, "a")["request_error"]
    repeated = request(b"", "text/plain", method="GET")
    repeated.headers.fields += ((b"X-Trace", b"2"), (b"x-trace", b"3"))
    assert build_document(repeated, "a")["headers"]["x-trace"] == "1, 2, 3"


def test_a_query_of_too_many_fields_is_refused() -> None:
    fields = "&".join(["a"] * (MAX_QUERY_FIELDS + 1))
    document = build_document(request(b"", "", method="GET", path="/v1/charges?" + fields), "a")
    assert f"more than {MAX_QUERY_FIELDS} fields" in document["request_error"]
    fields = "&".join(f"k{i}" for i in range(MAX_QUERY_FIELDS))
    document = build_document(request(b"", "", method="GET", path="/v1/charges?" + fields), "a")
    assert "request_error" not in document and len(document["query"]) == MAX_QUERY_FIELDS


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        # 9,000 keys nested 30 levels took 2.4 s to parse
        (b"&".join(b"k%d" % i + b"[a]" * 30 + b"=1" for i in range(MAX_NODES // 30 + 1)),
         "application/x-www-form-urlencoded"),
        (b"[" + b",".join([b"[]"] * MAX_NODES) + b"]", "application/json"),
        (b"<a>" + b"<b/>" * MAX_NODES + b"</a>", "application/xml"),
    ],
)  # fmt: skip
def test_a_body_of_too_many_objects_is_refused(body: bytes, content_type: str) -> None:
    document = build_document(request(body, content_type), "a")
    assert f"more than {MAX_NODES} objects and lists" in document["request_error"]


def test_a_body_of_as_many_objects_as_allowed_is_read() -> None:
    body = b"[" + b",".join([b"[]"] * (MAX_NODES - 1)) + b"]"  # and the outer list
    assert len(build_document(request(body, "application/json"), "a")["body"]) == MAX_NODES - 1
