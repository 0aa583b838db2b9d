"""List and categories parsing, exactly as Places365 publishes them."""

import codecs

import pytest

from common.hashing import stable_hash
from common.storage import Location
from pipelines.offline.corpus import (FOLDER, LISTED, NONE, UNLABELED, Categories, CorpusError, decode_labels,
                                      encode_labels, label_source, parse_line, read_categories, relative_image_path,
                                      sample_key)

CATS = Categories.from_names(["/a/airfield", "/a/art_school", "/b/beach"])


def test_places_categories_file(tmp_path):
    (tmp_path / "cats.txt").write_text("/a/airfield 0\n/b/beach 2\n/a/art_school 1\n")
    cats = read_categories(Location.parse(str(tmp_path / "cats.txt")))
    assert cats.names == ("/a/airfield", "/a/art_school", "/b/beach")
    assert cats.lookup("beach") == 2 and cats.lookup("/a/art_school") == 1 and cats.lookup("7") == 7


def test_bare_names_categories_file(tmp_path):
    (tmp_path / "cats.txt").write_text("cat\ndog\n\n")
    assert read_categories(Location.parse(str(tmp_path / "cats.txt"))).names == ("cat", "dog")


@pytest.mark.parametrize("text,message", [("/a 0\n/b 0\n", "given twice"), ("/a 0\n/b 2\n", "no gaps"),
                                          ("", "empty"), ("x\nx\n", "appears twice")])
def test_bad_categories_are_refused_with_the_file_named(tmp_path, text, message):
    (tmp_path / "cats.txt").write_text(text)
    with pytest.raises(CorpusError, match=message) as info:
        read_categories(Location.parse(str(tmp_path / "cats.txt")))
    assert "cats.txt" in str(info.value)


@pytest.mark.parametrize("line,source,label", [
    ("/a/art_school/00002916.jpg 1", "/a/art_school/00002916.jpg", 1),
    ("a/art_school/00002916.jpg 1", "a/art_school/00002916.jpg", 1),
    ("Places365_val_00020696.jpg 2", "Places365_val_00020696.jpg", 2),
    ("  /b/beach/1.jpg\t2\r", "/b/beach/1.jpg", 2),
    ("/b/beach/1.jpg beach", "/b/beach/1.jpg", 2),
])
def test_list_lines(line, source, label):
    entry = parse_line(line, CATS, labels=LISTED)
    assert (entry.source, entry.label, entry.problem) == (source, label, "")


def test_unlabeled_test_list_line():
    entry = parse_line("Places365_test_00000001.jpg", CATS, labels=NONE)
    assert entry.label == UNLABELED and entry.source == "Places365_test_00000001.jpg"


@pytest.mark.parametrize("line,problem", [("/b/beach/1.jpg 3", "label_out_of_range"),
                                          ("/b/beach/1.jpg -1", "label_out_of_range"),
                                          ("/b/beach/1.jpg", "missing_label"),
                                          ("/b/beach/1.jpg volcano", "unknown_class")])
def test_problem_lines(line, problem):
    assert parse_line(line, CATS, labels=LISTED).problem.startswith(problem)


def test_blank_lines_are_not_entries():
    assert parse_line("   ", CATS, labels=LISTED) is None


def test_paths_escaping_the_root_are_caught():
    assert relative_image_path("/a/b.jpg") == "a/b.jpg"
    assert relative_image_path("../../etc/passwd") is None
    assert relative_image_path("/a/../../x.jpg") is None


def test_keys_have_no_dots_and_keep_the_path():
    assert sample_key("/a/art_school/00002916.jpg") == "a_art_school_00002916"
    assert sample_key("Places365_val_00020696.jpg") == "Places365_val_00020696"
    assert "." not in sample_key("/x/some.file.name v2.jpeg")
    for url in ("https://www.youtube.com/watch?v=oHg5SJYRHA0", "http://m.youtube.com/watch?feature=x&v=oHg5SJYRHA0",
                "https://youtu.be/oHg5SJYRHA0"):
        assert (sample_key(url), relative_image_path(url)) == ("oHg5SJYRHA0", "oHg5SJYRHA0.*")


def test_stable_hash_is_stable():
    assert stable_hash(0, "order", "k") == stable_hash(0, "order", "k") != stable_hash(1, "order", "k")
    assert stable_hash("a") == 0x40F89E395B66422F  # pinned: shard membership must never drift


@pytest.mark.parametrize("range_bytes", [1, 2, 7, 64, 10**6])
def test_list_byte_ranges_give_every_line_once_as_the_preflight_reads_it(tmp_path, range_bytes):
    """The pre-flight counts and the Ray tasks parse the same lines: only b"\\n" ends one (U+2028, \\x0b,
    \\x1c and \\x85 are file-name characters), whichever range a line starts in."""
    from pipelines.offline.list_file import byte_ranges, iter_lines, lines_in_range

    data = (codecs.BOM_UTF8 + "a/x\u2028y.jpg 0\r\nb/v\x0bt.jpg 1\n\n  \nc/\x1cz\x85.jpg 2\n".encode()
            + b"d/caf\xe9.jpg 0\nlast 3")
    (tmp_path / "list.txt").write_bytes(data)
    loc = Location.parse(str(tmp_path / "list.txt"))
    expected = ["a/x\u2028y.jpg 0", "b/v\x0bt.jpg 1", "", "  ", "c/\x1cz\x85.jpg 2", "d/caf\udce9.jpg 0", "last 3"]
    assert list(iter_lines(loc)) == expected
    assert [line for start, end in byte_ranges(loc, range_bytes) for line in lines_in_range(loc, start, end)] \
        == expected


def test_list_lines_that_are_not_text_are_named():
    from pipelines.offline.list_file import decode_line, text_problem, unlistable_name

    assert text_problem("a/\u2028x.jpg 0") is None and text_problem("plain.jpg 3") is None
    assert text_problem(decode_line(b"a/caf\xe9.jpg 0")).startswith("not UTF-8 text (byte 0xe9 at column 6)")
    assert text_problem("\x89PNG\0\0") == "not a text list (a NUL byte at column 5)"
    assert unlistable_name(decode_line(b"beach/caf\xe9.jpg")) == "undecodable_name: the file name is not UTF-8"
    assert unlistable_name("beach/a\nb.jpg").startswith("unlistable_name: the file name holds a line break")
    assert unlistable_name("beach/x.jpg ").startswith("unlistable_name") and unlistable_name("beach/a b.jpg") is None


# -- UCF-101's split files and multi-label lists (Sports-1M) ---------------------------------------
UCF_CLASSES = "1 ApplyEyeMakeup\n2 ApplyLipstick\n3 Archery\n"


def test_ucf101_class_index_counts_from_one(tmp_path):
    (tmp_path / "classInd.txt").write_text(UCF_CLASSES)
    cats = read_categories(Location.parse(str(tmp_path / "classInd.txt")))
    assert cats.names == ("ApplyEyeMakeup", "ApplyLipstick", "Archery") and cats.first_id == 1
    # trainlist01.txt: its labels count as classInd.txt counts them
    assert parse_line("ApplyLipstick/v_ApplyLipstick_g01_c01.avi 2", cats, LISTED).label == 1
    assert parse_line("Archery/v_Archery_g01_c01.avi 3", cats, LISTED).label == 2
    assert parse_line("x.avi 4", cats, LISTED).problem == "label_out_of_range: 4 not in [1, 4)"
    assert parse_line("x.avi 0", cats, LISTED).problem.startswith("label_out_of_range")


def test_ucf101_test_list_takes_its_labels_from_the_class_folders(tmp_path):
    (tmp_path / "classInd.txt").write_text(UCF_CLASSES)
    cats = read_categories(Location.parse(str(tmp_path / "classInd.txt")))
    first = "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"
    assert label_source(first, cats) == FOLDER
    assert label_source(first, None) == NONE  # no categories: an unlabeled list
    assert label_source("Places365_test_00000001.jpg", cats) == NONE
    assert label_source("Archery/v_Archery_g01_c01.avi 3", cats) == LISTED
    entry = parse_line("Archery/v_Archery_g02_c01.avi", cats, FOLDER)
    assert (entry.source, entry.label, entry.label_token, entry.problem) == (
        "Archery/v_Archery_g02_c01.avi", 2, "Archery", "")
    assert parse_line("Bowling/v_Bowling_g01_c01.avi", cats, FOLDER).problem == (
        "unknown_class: folder 'Bowling' of 'Bowling/v_Bowling_g01_c01.avi' names no class of the categories")
    assert parse_line("v_Archery_g01_c01.avi", cats, FOLDER).problem.startswith("missing_label")


@pytest.mark.parametrize("text,first", [("0 a\n1 b\n", 0), ("a 1\nb 2\n", 1), ("a 0\nb 1\n", 0)])
def test_numbered_categories_count_from_zero_or_one(tmp_path, text, first):
    (tmp_path / "cats.txt").write_text(text)
    cats = read_categories(Location.parse(str(tmp_path / "cats.txt")))
    assert cats.names == ("a", "b") and cats.first_id == first


def test_ids_from_two_are_refused(tmp_path):
    (tmp_path / "cats.txt").write_text("2 a\n3 b\n")
    with pytest.raises(CorpusError, match=r"0\.\.1 or 1\.\.2 with no gaps"):
        read_categories(Location.parse(str(tmp_path / "cats.txt")))


def test_multi_label_lines():
    entry = parse_line("https://youtu.be/abc 2,0,2", CATS, LISTED)
    assert (entry.source, entry.label, entry.labels, entry.problem) == ("https://youtu.be/abc", 2, (2, 0), "")
    assert parse_line("v.mp4 beach,airfield", CATS, LISTED).labels == (2, 0)
    assert parse_line("v.mp4 1,1", CATS, LISTED).labels == ()  # one distinct label: a single-label entry
    assert parse_line("v.mp4 1,3", CATS, LISTED).problem.startswith("label_out_of_range: 3")
    assert parse_line("v.mp4 1,", CATS, LISTED).problem.startswith("unknown_class: ''")
    assert parse_line("v.mp4 1,volcano", CATS, LISTED).problem.startswith("unknown_class: 'volcano'")
    comma = Categories.from_names(["a,b", "a", "b"])  # a class whose name holds a comma is that class
    assert parse_line("v.mp4 a,b", comma, LISTED).label == 0 and parse_line("v.mp4 b,a", comma, LISTED).labels == (2, 1)
    assert encode_labels((2, 0)) == b"2,0" and decode_labels(b"2,0", 2) == [2, 0] and decode_labels(None, 5) == [5]
