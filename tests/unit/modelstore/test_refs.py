import pytest

from modelstore.errors import RefError
from modelstore.refs import AdapterRef, BaseRef, is_base_namespace, parse_ref


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("base_models@v20251123-mistral-v0.3", BaseRef("v20251123-mistral-v0.3")),
        ("base_models@current", BaseRef("current")),
        ("base_models", BaseRef("current")),
        ("synthesizer/mistral_synth_v1@current", AdapterRef("synthesizer", "mistral_synth_v1", "current")),
        ("synthesizer/mistral_synth_v1@v1", AdapterRef("synthesizer", "mistral_synth_v1", "v1")),
        ("re_ranker/mistral_re_ranker_v1", AdapterRef("re_ranker", "mistral_re_ranker_v1", "current")),
        ("base_models/llava_tiny@v1-tiny-llava", BaseRef("v1-tiny-llava", "llava_tiny")),
        ("base_models/llava_tiny@current", BaseRef(name="llava_tiny")),
        ("base_models/llava_tiny", BaseRef(name="llava_tiny")),
    ],
)
def test_valid_refs_parse_and_round_trip(raw, expected):
    ref = parse_ref(raw)
    assert ref == expected
    assert parse_ref(str(ref)) == ref


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ("", "empty"),
        (" base_models", "whitespace"),
        ("/etc/passwd", "filesystem paths"),
        ("/abs/adapter@v1", "filesystem paths"),
        ("~/models", "filesystem paths"),
        ("../base_models@v1", "'..'"),
        ("synthesizer/../../etc@v1", "'..'"),
        ("synthesizer/..@v1", "'..'"),
        ("synthesizer//x@v1", "empty"),
        ("synthesizer/x@", "empty version"),
        ("synthesizer/x@..", "'..'"),
        ("synthesizer/x@.hidden", "invalid version"),
        ("synthesizer/x@v1/../v2", "invalid version"),
        ("synthesizer/x@a@b", "more than one"),
        ("Synthesizer/x@v1", "agent"),
        ("synthesizer/x y@v1", "adapter name"),
        ("synthesizer\\x@v1", "filesystem paths"),
        ("a/b/c@v1", "expected"),
        ("mistral@v1", "one-part"),
        ("base_models/versions@v1", "reserved"),
        ("base_models/current", "reserved"),
        ("base_models/Llava@v1", "base name"),
        ("base_models/llava tiny@v1", "base name"),
        ("base_models/llava_tiny/x@v1", "expected"),
        ("base_models/llava_tiny@..", "'..'"),
        ("base_models/@v1", "empty"),
    ],
)
def test_bad_refs_are_refused_with_the_input_quoted(raw, fragment):
    with pytest.raises(RefError) as exc:
        parse_ref(raw)
    assert fragment in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_non_string_refused():
    with pytest.raises(RefError):
        parse_ref(42)


def test_named_base_ref_properties():
    ref = parse_ref("base_models/llava_tiny@v1")
    assert ref.kind == "base" and ref.namespace == "base_models/llava_tiny" and ref.name == "llava_tiny"
    assert ref.with_version("v2") == BaseRef("v2", "llava_tiny") and str(ref.with_version("v2")) == "base_models/llava_tiny@v2"
    assert ref != BaseRef("v1")  # the text base of the same version is another namespace
    assert BaseRef("v1").namespace == "base_models" and str(BaseRef()) == "base_models@current"


@pytest.mark.parametrize("name", ["versions", "current", "../x", "Llava", ""])
def test_base_ref_refuses_a_bad_name_when_built_directly(name):
    with pytest.raises(RefError):
        BaseRef("v1", name)


@pytest.mark.parametrize("namespace, expected", [
    ("base_models", True), ("base_models/llava_tiny", True), ("base_models/versions", False),
    ("base_models@v1", False), ("base_models/llava_tiny@v1", False), ("critic/x", False), ("", False),
])
def test_is_base_namespace(namespace, expected):
    assert is_base_namespace(namespace) is expected
