"""Hostile and odd input to the sources (issue 10, part B): every defect is a reject row with a true
reason, or one ConfigError line for a defect of a whole file; nothing hangs, nothing is read
outside --images unless allowed, and nouns are words."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import struct
import tarfile
import time
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_image
from PIL import Image

from dataengine.config import ConfigError, MineConfig, SourceConfig
from dataengine.images import ImageRejected, decode_rgb, decode_sample, read_image_bytes
from dataengine.nouns import normalize_caption
from dataengine.sources import create_source

# --- helpers ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging (a FIFO used to block open() for good)."""
    def expired(*_):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def all_samples(config: SourceConfig):
    source = create_source(config)
    return source.read(0, len(source))


def decoded(sample, config: SourceConfig | None = None):
    """The sample after the decode stage's work: its pixels, or the reject it became."""
    config = config or MineConfig().source
    if sample.alive:
        try:
            decode_sample(sample, config)
        except ImageRejected as error:
            sample.drop(error.reason, error.detail, "decode")
    return sample


def reasons(samples) -> dict[str, str | None]:
    return {s.key: (s.reject.reason if s.reject else None) for s in samples}


def jpeg_bytes(color=(200, 30, 30), size=(32, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "JPEG")
    return buffer.getvalue()


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def wds_config(path) -> SourceConfig:
    return SourceConfig(type="webdataset", urls=str(path))


def folder_config(images: Path, table: Path, **settings) -> SourceConfig:
    return SourceConfig(type="folder", images=str(images), captions=str(table), **settings)


def bomb_png(side: int = 9400) -> bytes:
    """A 1-bit greyscale PNG of side x side zero pixels: a few KB that decode to side**2 pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" * (1 + (side + 7) // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


# --- item 3: untrusted file reads ------------------------------------------------------------------


def test_a_fifo_named_like_an_image_is_missing_file_without_hanging(tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    with deadline(10), pytest.raises(ImageRejected) as error:
        read_image_bytes(str(fifo))
    assert error.value.reason == "missing_file" and "not a regular file (a FIFO)" in error.value.detail


def test_a_symlink_to_dev_zero_is_missing_file_not_an_endless_read(tmp_path):
    link = tmp_path / "z.jpg"
    link.symlink_to("/dev/zero")
    with deadline(10), pytest.raises(ImageRejected) as error:
        read_image_bytes(str(link))
    assert error.value.reason == "missing_file" and "not a regular file (a character device)" in error.value.detail


def test_a_symlink_to_a_regular_image_is_read(tmp_path):
    real = write_image(tmp_path / "real.jpg")
    (tmp_path / "link.jpg").symlink_to(real)
    assert read_image_bytes(str(tmp_path / "link.jpg")) == real.read_bytes()


def test_files_over_max_file_bytes_are_too_large(tmp_path):
    path = write_image(tmp_path / "a.png", size=(64, 64))
    with pytest.raises(ImageRejected) as error:
        read_image_bytes(str(path), max_bytes=100)
    assert error.value.reason == "too_large" and "max_file_bytes 100" in error.value.detail
    with pytest.raises(ImageRejected) as error:  # a tar member's declared size counts too
        read_image_bytes(str(path), (0, 5000), max_bytes=100)
    assert error.value.reason == "too_large"


def test_a_decompression_bomb_under_max_pixels_is_refused_from_its_header():
    data = bomb_png()
    assert len(data) < 40_000 and 9400 * 9400 < MineConfig().source.max_pixels
    started = time.perf_counter()
    with pytest.raises(ImageRejected) as error:
        decode_rgb(data, MineConfig().source.max_pixels, "bomb.png")
    assert time.perf_counter() - started < 2.0  # refused from the header, not decoded to 88 M pixels
    assert error.value.reason == "too_large" and "decompression bomb" in error.value.detail
    assert "bomb.png" in error.value.detail


def test_ordinary_flat_images_are_not_taken_for_bombs():
    buffer = io.BytesIO()
    Image.new("L", (3000, 2000), 10).save(buffer, "PNG")  # about 580 pixels per byte
    assert decode_rgb(buffer.getvalue(), 10**8).shape == (2000, 3000, 3)


# --- item 8: decode_error details name the file, the same on every run ------------------------------


def test_decode_error_details_name_the_member_not_an_object_repr(tmp_path):
    tar = write_tar(tmp_path / "t.tar", {"a.jpg": b"\xff\xd8 garbage, not a jpeg" * 3, "a.txt": b"A dog."})
    details = []
    for _ in range(2):
        [sample] = [decoded(s) for s in all_samples(wds_config(tar))]
        assert sample.reject.reason == "decode_error"
        details.append(sample.reject.detail)
    assert "object at 0x" not in details[0] and "a.jpg" in details[0]
    assert details[0] == details[1]
    with pytest.raises(ImageRejected) as error:
        decode_rgb(b"not an image at all", 10**7, "folder/x.png")
    assert "object at 0x" not in error.value.detail and "folder/x.png" in error.value.detail


# --- items 2 and 8: webdataset tars -----------------------------------------------------------------


def test_a_malformed_key_json_is_bad_metadata_with_the_parsers_message(tmp_path):
    tar = write_tar(tmp_path / "t.tar", {
        "good.jpg": jpeg_bytes(), "good.json": json.dumps({"caption": "A red dog."}).encode(),
        "bad.jpg": jpeg_bytes(), "bad.json": b'{"caption": "A dog", ',
        "list.jpg": jpeg_bytes(), "list.json": b'["A dog"]',
    })
    samples = {s.key: s for s in all_samples(wds_config(tar))}
    assert samples["good"].alive and samples["good"].captions[0].text == "A red dog."
    assert samples["bad"].reject.reason == "bad_metadata"
    assert "bad.json" in samples["bad"].reject.detail and "Expecting" in samples["bad"].reject.detail
    assert samples["list"].reject.reason == "bad_metadata" and "not an object" in samples["list"].reject.detail


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz"])
def test_compressed_tars_are_read(tmp_path, mode):
    members = {"a.jpg": jpeg_bytes((200, 0, 0)), "a.txt": b"A red square.",
               "b.jpg": jpeg_bytes((0, 200, 0)), "b.txt": b"A green square."}
    tar = write_tar(tmp_path / f"t.tar.{mode[2:]}", members, mode)
    samples = [decoded(s) for s in all_samples(wds_config(tar))]
    assert reasons(samples) == {"a": None, "b": None}
    assert [s.captions[0].text for s in samples] == ["A red square.", "A green square."]
    assert samples[0].image[0, 0, 0] > 150 and samples[1].image[0, 0, 1] > 150


def test_empty_non_tar_and_truncated_compressed_files_say_what_they_are(tmp_path):
    (tmp_path / "empty.tar").write_bytes(b"")
    (tmp_path / "text.tar").write_bytes(b"just some notes, not an archive\n" * 50)
    whole = write_tar(tmp_path / "whole.tar.gz", {f"k{i}.jpg": os.urandom(4000) for i in range(5)}, "w:gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "whole.tar.gz").unlink()
    details = {}
    for name in ("empty.tar", "text.tar", "cut.tar.gz"):
        samples = all_samples(wds_config(tmp_path / name))
        errors = [s for s in samples if s.key.startswith("source-error-")]  # the tar's own row
        assert len(errors) == 1 and errors[0].reject.reason == "source_error", name
        details[name] = errors[0].reject.detail
    assert "empty file (0 bytes)" in details["empty.tar"]
    assert "not a tar archive" in details["text.tar"]
    assert "truncated gz-compressed tar" in details["cut.tar.gz"]
    assert not any("truncated tar (" in detail for detail in details.values())


def test_an_animated_gif_member_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 10), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    tar = write_tar(tmp_path / "t.tar", {"anim.gif": buffer.getvalue(), "anim.txt": b"A red flag."})
    [sample] = [decoded(s) for s in all_samples(wds_config(tar))]
    assert sample.alive, sample.reject
    assert sample.image.shape == (10, 20, 3) and sample.image[5, 5, 0] > 200 and sample.image[5, 5, 2] < 50


def test_dotted_keys_follow_webdatasets_rule(tmp_path):
    """webdataset's key is the basename up to its first dot: a.b.jpg + a.txt is one sample `a`."""
    from webdataset.tariterators import base_plus_ext

    assert base_plus_ext("dir/a.b.jpg") == ("dir/a", "b.jpg")
    tar = write_tar(tmp_path / "t.tar", {"a.b.jpg": jpeg_bytes(), "a.txt": b"A red square.",
                                         "c.jpg": jpeg_bytes(), "c.x.txt": b"A second square."})
    samples = {s.key: decoded(s) for s in all_samples(wds_config(tar))}
    assert reasons(samples.values()) == {"a": None, "c": None}
    assert samples["c"].captions[0].text == "A second square."


def test_a_key_without_image_names_its_members(tmp_path):
    tar = write_tar(tmp_path / "t.tar", {"a.txt": b"A dog.", "a.mp4": b"\0" * 10})
    [sample] = all_samples(wds_config(tar))
    assert sample.reject.reason == "missing_file" and "a.mp4" not in sample.reject.detail
    assert "mp4" in sample.reject.detail and "txt" in sample.reject.detail


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_tar_members_over_max_file_bytes_are_too_large_without_being_read(tmp_path, mode):
    """The member header's size is compared with max_file_bytes first: a compressed tar holding a
    member of 24 MiB zeros (a few KB on disk) never has it decompressed into memory."""
    import tracemalloc

    huge = b"\0" * (24 << 20)
    tar = write_tar(tmp_path / f"t.tar{'.gz' if 'gz' in mode else ''}", {
        "big.jpg": huge, "big.txt": b"A dog.",
        "longtxt.jpg": jpeg_bytes(), "longtxt.txt": huge,
        "longjson.jpg": jpeg_bytes(), "longjson.json": b'{"caption": "' + b"a" * (24 << 20) + b'"}',
        "ok.jpg": jpeg_bytes(), "ok.txt": b"A red dog."}, mode)
    del huge
    config = wds_config(tar)
    config.max_file_bytes = 1 << 20
    source = create_source(config)
    tracemalloc.start()
    try:
        samples = [decoded(sample, config) for sample in source.read(0, len(source))]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak} bytes held while reading"
    assert reasons(samples) == {"big": "too_large", "longtxt": "too_large", "longjson": "too_large", "ok": None}
    by_key = {sample.key: sample for sample in samples}
    for key, member in (("big", "big.jpg"), ("longtxt", "longtxt.txt"), ("longjson", "longjson.json")):
        detail = by_key[key].reject.detail
        assert f"#{member}:" in detail and "max_file_bytes 1048576" in detail, detail
    assert by_key["ok"].captions[0].text == "A red dog."


def test_a_key_txt_that_is_not_utf8_is_refused_as_in_every_other_source(tmp_path):
    """The same bytes as a folder table's caption cell: one rule (tables.captions_of) for both."""
    latin1 = "Un caf\xe9.".encode("latin-1")
    tar = write_tar(tmp_path / "t.tar", {"a.jpg": jpeg_bytes(), "a.txt": latin1,
                                         "b.jpg": jpeg_bytes(), "b.txt": "Un caf\xe9.".encode()})
    samples = all_samples(wds_config(tar))
    assert reasons(samples) == {"a": "source_error", "b": None}
    assert "a.txt" in samples[0].reject.detail and "not UTF-8" in samples[0].reject.detail
    assert samples[1].captions[0].text == "Un caf\xe9."
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "a.jpg")
    pq.write_table(pa.table({"image": ["a.jpg"], "caption": pa.array([latin1], pa.binary())}), tmp_path / "t.parquet")
    [row] = all_samples(folder_config(images, tmp_path / "t.parquet"))
    assert row.reject.reason == "source_error" and "not UTF-8" in row.reject.detail


# --- item 4: COCO JSON ------------------------------------------------------------------------------


def write_coco(tmp_path: Path, captions, instances=None) -> SourceConfig:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_image(images / name)
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    config = SourceConfig(type="coco", images=str(images), captions=str(tmp_path / "captions.json"))
    if instances is not None:
        (tmp_path / "instances.json").write_text(json.dumps(instances))
        config.instances = str(tmp_path / "instances.json")
    return config


def test_a_coco_captions_file_that_is_a_list_is_one_config_error(tmp_path):
    config = write_coco(tmp_path, [{"id": 1, "file_name": "a.jpg"}])
    with pytest.raises(ConfigError, match="holds a JSON list, expected a COCO object"):
        create_source(config)


def test_coco_image_records_without_a_usable_id_are_source_error_rows(tmp_path):
    config = write_coco(tmp_path, {
        "images": [{"file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}, {"id": [3], "file_name": "c.jpg"}, "junk"],
        "annotations": [{"id": 10, "image_id": 2, "caption": "A red square."}]})
    samples = all_samples(config)
    assert reasons(samples) == {"000000000002": None, "bad-image-record-0": "source_error",
                                "bad-image-record-2": "source_error", "bad-image-record-3": "source_error"}
    details = {s.key: s.reject.detail for s in samples if s.reject}
    assert "no id" in details["bad-image-record-0"] and "integer or a string" in details["bad-image-record-2"]


def test_coco_messages_show_values_with_the_one_bounded_repr(tmp_path):
    """config.short_repr, as everywhere else: a deep or long id is cut by depth and length."""
    from dataengine.config import short_repr
    from dataengine.sources import coco

    deep = [[[[[list(range(1000))]]]]]
    config = write_coco(tmp_path, {"images": [{"id": deep, "file_name": "a.jpg"}], "annotations": []})
    [sample] = all_samples(config)
    assert sample.reject.detail.endswith(f"got {short_repr(deep)}") and len(sample.reject.detail) < 200
    assert not hasattr(coco, "_short")


def test_coco_int_and_string_ids_mix(tmp_path):
    config = write_coco(tmp_path, {
        "images": [{"id": "b-img", "file_name": "b.jpg"}, {"id": 7, "file_name": "a.jpg"}, {"id": "7", "file_name": "c.jpg"}],
        "annotations": [{"id": 1, "image_id": "b-img", "caption": "A square."},
                        {"id": 2, "image_id": 7, "caption": "A red box."},
                        {"id": 3, "image_id": "7", "caption": "A blue box."}]})
    samples = all_samples(config)
    assert [(s.key, s.captions[0].text) for s in samples] == [
        ("000000000007", "A red box."), ("7", "A blue box."), ("b-img", "A square.")]
    assert all(s.alive for s in samples)


@pytest.mark.parametrize("which", ["captions", "instances"])
def test_a_coco_annotation_without_image_id_is_one_config_error(tmp_path, which):
    good = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 1, "image_id": 1, "caption": "A dog."}]}
    broken = {"images": good["images"], "annotations": [{"id": 5, "caption": "A dog."}]}
    config = write_coco(tmp_path, broken if which == "captions" else good, broken if which == "instances" else None)
    with pytest.raises(ConfigError, match=r"annotations\[0\] \(id 5\) has no image_id"):
        create_source(config)


def test_a_coco_caption_that_is_not_a_string_rejects_its_image_only(tmp_path):
    config = write_coco(tmp_path, {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [{"id": 1, "image_id": 1, "caption": 42}, {"id": 2, "image_id": 2, "caption": "A dog."}]})
    assert reasons(all_samples(config)) == {"000000000001": "source_error", "000000000002": None}


# --- item 6: paths outside --images -----------------------------------------------------------------


def test_coco_file_names_outside_images_are_refused_unless_allowed(tmp_path):
    outside = write_image(tmp_path / "outside.jpg")
    (tmp_path / "images" / "sub").mkdir(parents=True)
    config = write_coco(tmp_path, {
        "images": [{"id": 1, "file_name": "../outside.jpg"}, {"id": 2, "file_name": str(outside)},
                   {"id": 3, "file_name": "a.jpg"}, {"id": 4, "file_name": "sub/../b.jpg"}],
        "annotations": [{"id": i, "image_id": i, "caption": "A red square."} for i in (1, 2, 3, 4)]})
    samples = [decoded(s) for s in all_samples(config)]
    assert reasons(samples) == {"000000000001": "source_error", "000000000002": "source_error",
                                "000000000003": None, "000000000004": None}
    assert "outside --images" in samples[0].reject.detail and "--allow-outside-images" in samples[0].reject.detail
    config.allow_outside_images = True
    assert set(reasons(decoded(s) for s in all_samples(config)).values()) == {None}


def test_folder_paths_outside_images_are_refused_unless_allowed(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "in.jpg")
    write_image(tmp_path / "outside.jpg")
    table = tmp_path / "t.jsonl"
    rows = [{"image": "in.jpg", "caption": "A red square."}, {"image": "../outside.jpg", "caption": "A red square."},
            {"image": str(tmp_path / "outside.jpg"), "caption": "A red square."}]
    table.write_text("".join(json.dumps(row) + "\n" for row in rows))
    samples = all_samples(folder_config(images, table))
    assert [s.reject.reason if s.reject else None for s in samples] == [None, "source_error", "source_error"]
    allowed = [decoded(s) for s in all_samples(folder_config(images, table, allow_outside_images=True))]
    assert all(s.alive for s in allowed)


def test_outside_images_flag_reaches_the_setting():
    from dataengine.cli import MINE_FLAGS

    flags = {flag.name: flag.key for flag in MINE_FLAGS}
    assert flags["--allow-outside-images"] == "source.allow_outside_images"
    assert flags["--annotation-frame"] == "source.annotation_frame"


# --- item 5: one bad row never refuses the table ----------------------------------------------------


def test_jsonl_bad_rows_are_source_error_rows_and_the_rest_is_mined(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        write_image(images / name)
    table = tmp_path / "t.jsonl"
    table.write_bytes(b"".join([
        json.dumps({"image": "a.jpg", "caption": "A red square."}).encode() + b"\n",
        json.dumps({"image": "b.jpg", "caption": 42}).encode() + b"\n",
        b'{"image": "c.jpg", "caption": \n',
        b'{"image": "x.jpg", "caption": "caf\xe9"}\n',
        b"[1, 2]\n",
        json.dumps({"image": "d.jpg", "caption": ["A blue wall.", "A square."]}).encode() + b"\n",
    ]))
    samples = all_samples(folder_config(images, table))
    assert reasons(samples) == {"a": None, "row-1": "source_error", "row-2": "source_error",
                                "row-3": "source_error", "row-4": "source_error", "d": None}
    details = {s.key: s.reject.detail for s in samples if s.reject}
    assert "int" in details["row-1"] and "line 3" in details["row-2"] and "UTF-8" in details["row-3"]
    assert [c.text for c in samples[-1].captions] == ["A blue wall.", "A square."]


def test_csv_rows_with_missing_fields_are_source_error_rows(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "a.jpg")
    write_image(images / "c.jpg")
    table = tmp_path / "t.csv"
    table.write_text('image,caption\na.jpg,A red square.\nb.jpg\nc.jpg,"A square, red."\n42,43\n')
    samples = all_samples(folder_config(images, table))
    assert reasons(samples) == {"a": None, "row-1": "source_error", "c": None, "42": None}
    assert samples[2].captions[0].text == "A square, red."
    assert samples[3].captions[0].text == "43"  # every CSV cell is text, none is type-guessed


def test_a_csv_field_over_the_field_limit_is_one_source_error_row_and_the_rest_is_read(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a", "c", "d"):
        write_image(images / f"{name}.jpg")
    table = tmp_path / "t.csv"
    huge = "x" * (200 * 1024)  # over the csv module's 128 Ki-character field limit
    table.write_text(f"image,caption\na.jpg,A red square.\nb.jpg,{huge}\nc.jpg,A blue square.\nd.jpg,A dot.\n")
    samples = all_samples(folder_config(images, table))
    assert reasons(samples) == {"a": None, "row-1": "source_error", "c": None, "d": None}
    assert "field larger than field limit" in samples[1].reject.detail
    assert [s.captions[0].text for s in samples if s.alive] == ["A red square.", "A blue square.", "A dot."]


def test_a_csv_header_that_cannot_be_parsed_is_one_config_error(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    table = tmp_path / "t.csv"
    table.write_text("image," + "c" * (200 * 1024) + "\na.jpg,A dog.\n")
    with pytest.raises(ConfigError, match="cannot read the header"):
        create_source(folder_config(images, table))


# --- item 7: nouns are words -------------------------------------------------------------------------


def test_captions_are_normalised():
    assert normalize_caption("<b>A dog</b>") == "A dog"
    assert normalize_caption("a dog\x00 on a mat") == "a dog on a mat"
    assert normalize_caption("a \u202edog\u202c on a\u200b sofa") == "a dog on a sofa"
    assert normalize_caption(b"a dog") == "a dog"
    assert normalize_caption("Tom &amp; Jerry,\n  two  cats") == "Tom & Jerry, two cats"
    with pytest.raises(ValueError, match="not UTF-8"):
        normalize_caption(b"caf\xe9")


@pytest.mark.parametrize("text", ["a the of", "dog\x00 on a mat", "<b>A dog</b>", "b'a dog'", "a \u202edog on a sofa"])
def test_the_extractor_gives_only_words(noun_extractor, text):
    [mentions] = noun_extractor.mentions([text])
    for mention in mentions:
        assert mention.noun.replace("-", "").isalpha() and mention.noun not in ("of", "the", "a"), mention


def test_parquet_captions_as_bytes_are_decoded_or_refused(tmp_path, noun_extractor):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_image(images / name)
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image": ["a.jpg", "b.jpg", "c.jpg"],
                             "caption": pa.array([b"<i>A dog</i> on a mat", b"caf\xe9", b"a \xe2\x80\xaecat"], pa.binary())}),
                   table)
    samples = all_samples(folder_config(images, table))
    assert reasons(samples) == {"a": None, "row-1": "source_error", "c": None}
    texts = [samples[0].captions[0].text, samples[2].captions[0].text]
    assert texts == ["A dog on a mat", "a cat"]
    nouns = [[m.noun for m in mentions] for mentions in noun_extractor.mentions(texts)]
    assert nouns == [["dog", "mat"], ["cat"]]
