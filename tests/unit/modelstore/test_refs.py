import pytest

from modelstore.errors import RefError
from modelstore.refs import AdapterRef, BaseRef, parse_ref


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("base_models@v20251123-mistral-v0.3", BaseRef("v20251123-mistral-v0.3")),
        ("base_models@current", BaseRef("current")),
        ("base_models", BaseRef("current")),
        ("synthesizer/mistral_synth_v1@current", AdapterRef("synthesizer", "mistral_synth_v1", "current")),
        ("synthesizer/mistral_synth_v1@v1", AdapterRef("synthesizer", "mistral_synth_v1", "v1")),
        ("re_ranker/mistral_re_ranker_v1", AdapterRef("re_ranker", "mistral_re_ranker_v1", "current")),
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
        ("base_models/x@v1", "holds no adapters"),
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
