"""Writes examples/explore.ipynb (no outputs) from the cells below: edit here, rerun, commit both."""

import os

import nbformat

CELLS = [
    ("markdown", "# Exploring SSL4EO-S12 v1.1 with ssl4eo_zarr\n\nOpen a split lazily, inspect it, plot a "
                 "location, compute statistics and export a GeoTIFF. Set `ROOT` to your dataset; by default the "
                 "notebook makes a small synthetic one."),
    ("code", "import os, tempfile\n%matplotlib inline\nimport numpy as np\n"
             "import ssl4eo_zarr\nfrom ssl4eo_zarr.synthetic import make_dataset\n\n"
             "ROOT = os.environ.get('SSL4EO_ROOT') or os.path.join(tempfile.mkdtemp(), 'demo')\n"
             "if not os.path.exists(ROOT):\n"
             "    make_dataset(ROOT, n_files=2, samples=8, size=64, split='val')\nROOT"),
    ("markdown", "## Open a split lazily\nOpening reads only metadata and sample ids; every array is dask-backed."),
    ("code", "ds = ssl4eo_zarr.open_dataset(ROOT, split='val')\nds"),
    ("code", "ds.ssl4eo.modalities, ds['S2L2A'].dtype, ds['S2L2A'].data.chunksize"),
    ("markdown", "## Units and clouds"),
    ("code", "refl = ds.ssl4eo.reflectance('S2L2A')          # (DN - 1000) / 10000, float32, lazy\n"
             "float(refl.sel(band_S2L2A='B08').mean())"),
    ("code", "clouds = ds.ssl4eo.cloud_fraction().compute()   # thin + thick cloud, per sample and season\n"
             "clear = ds.ssl4eo.select(max_cloud=0.2)\nclouds.shape, clear.sizes['sample']"),
    ("markdown", "## Look at a location\nS2 RGB, S1 pseudo-colour (VH, VV, VH) and the SEnSeI cloud classes for "
                 "the four seasons."),
    ("code", "fig = ds.ssl4eo.quicklook(0)\nfig"),
    ("code", "from ssl4eo_zarr.plot import plot_locations\nplot_locations(ds)"),
    ("markdown", "## Statistics against the published ones"),
    ("code", "from ssl4eo_zarr.stats import band_stats\nstats = band_stats(ds, ['S2L2A', 'S1GRD'])\n"
             "print(stats['S1GRD'].compare())"),
    ("markdown", "## Export one location as a GeoTIFF"),
    ("code", "import rasterio\n\npatch = ds.ssl4eo.sample(0, time=1)\npath = os.path.join(ROOT, 'patch.tif')\n"
             "patch.rio.to_raster(path)\nwith rasterio.open(path) as src:\n"
             "    print(src.crs, src.bounds, src.count)"),
]


def main() -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "markdown" else nbformat.v4.new_code_cell(src)
                for kind, src in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, os.path.join(os.path.dirname(os.path.abspath(__file__)), "explore.ipynb"))


if __name__ == "__main__":
    main()
