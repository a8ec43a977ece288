"""The server's memory probe: RSS in every round's entry; tracemalloc growth on request; a bad setting refused."""

import tracemalloc

import pytest

from consortium.workflows import memory


def test_rss_only_by_default(monkeypatch, tmp_path):
    monkeypatch.delenv(memory.ENV, raising=False)
    probe = memory.MemoryProbe()
    entry = probe.sample(0, str(tmp_path))
    assert set(entry) == {"server_rss_mb", "server_rss_untrimmed_mb"} and entry["server_rss_mb"] > 10
    assert not (tmp_path / memory.FILE).exists()


def test_tracemalloc_names_where_memory_grew(monkeypatch, tmp_path):
    monkeypatch.setenv(memory.ENV, "2")
    was_tracing = tracemalloc.is_tracing()
    probe = memory.MemoryProbe()
    kept = []
    try:
        for number in range(4):
            kept.append(bytearray(4 * 2**20))  # 4 MB held per round, from this file's line
            probe.sample(number, str(tmp_path))
    finally:
        if not was_tracing:
            tracemalloc.stop()
    text = (tmp_path / memory.FILE).read_text()
    assert text.count("== round ") == 2 and "== round 2," in text and "== round 4," in text
    last = text.split("== round 4,")[1].splitlines()[1]  # the biggest growth first: the 12 MB held since round 1
    assert "test_memory_probe.py" in last and float(last.split()[0]) == pytest.approx(12, abs=0.5)


@pytest.mark.skipif(memory._malloc_trim() is None, reason="no glibc malloc_trim here")
def test_freed_heap_goes_back_to_the_system_after_a_round(monkeypatch, tmp_path):
    """128 MB in 64 KB blocks, every 16th kept: the freed 120 MB lie between live blocks, where glibc keeps them
    until malloc_trim; the round's entry shows RSS before and after."""
    monkeypatch.delenv(memory.ENV, raising=False)
    probe = memory.MemoryProbe()
    blocks = [bytearray(64 * 2**10) for _ in range(2048)]
    kept = blocks[::16]
    del blocks
    entry = probe.sample(0, str(tmp_path))
    assert entry["server_rss_untrimmed_mb"] - entry["server_rss_mb"] > 60, entry
    assert len(kept) == 128


@pytest.mark.parametrize("raw", ["0", "-3", "often"])
def test_a_bad_setting_is_refused_with_its_name(monkeypatch, raw):
    monkeypatch.setenv(memory.ENV, raw)
    with pytest.raises(ValueError, match=f"{memory.ENV}={raw!r}"):
        memory.MemoryProbe()
