"""The zip layer against Python's zipfile: same members and bytes for any archive, fast path or fallback."""

import io
import os
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ssl4eo_zarr as sz
from ssl4eo_zarr import CorruptFileError
from ssl4eo_zarr.storage import MemoryZipArchive, ScratchBuffer

names = st.text(alphabet="abcdefghij./_0123456789é", min_size=1, max_size=20).filter(
    lambda n: not n.startswith("/") and ".." not in n.split("/") and not n.endswith("/"))


@settings(max_examples=80, deadline=None)
@given(members=st.dictionaries(names, st.binary(max_size=3000), min_size=1, max_size=12),
       method=st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]),
       comment=st.binary(max_size=300), zip64=st.booleans(), prefix=st.binary(max_size=40))
def test_members_read_like_zipfile(members, method, comment, zip64, prefix):
    buf = io.BytesIO()
    buf.write(prefix)  # data before the archive (self-extractors): the fast path must step aside
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name, data in members.items():
            with zf.open(zipfile.ZipInfo(name), "w", force_zip64=zip64) as f:
                f.write(data)
        zf.comment = comment
    blob = buf.getvalue()
    ours = MemoryZipArchive(blob, "fuzz.zip")
    try:
        ref = zipfile.ZipFile(io.BytesIO(blob))
    except zipfile.BadZipFile:  # e.g. a comment that holds an end-of-directory signature: refuse it too
        with pytest.raises(CorruptFileError, match="fuzz.zip"):
            ours.names()
        return
    with ref:
        assert sorted(ours.names()) == sorted(ref.namelist())
        scratch = ScratchBuffer()
        for name in ref.namelist():
            assert ours.read(name) == ref.read(name)
            assert bytes(ours.read_into(name, scratch)) == ref.read(name)


def test_a_split_holds_no_file_descriptors(root):
    before = len(os.listdir("/proc/self/fd"))
    ds = sz.open_dataset(root)
    assert len(os.listdir("/proc/self/fd")) == before
    ds["S2L1C"].isel(sample=slice(0, 20)).load()  # reads reopen and close again
    assert len(os.listdir("/proc/self/fd")) <= before + 1
