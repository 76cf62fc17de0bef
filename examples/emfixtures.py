"""Realistic microscope TIFFs with each vendor's metadata layout, written with the standard library
only (no numpy, no tifffile), deterministic for a given size and seed. Used by examples/generate and
by the test suite. Layouts follow the vendors' published descriptions (FEI/Thermo Fisher INI block in
tag 34682, Zeiss SmartSEM label/value lines in tag 34118, TVIPS binary header in tag 37706, Tescan
INI in tag 50431, JEOL `$KEY value` .txt sidecars, ImageJ and OME-XML descriptions); values are
invented but plausible."""
import array, json, math, os, random, struct, sys

# --- a TIFF writer: classic or BigTIFF, either byte order, strips or tiles, several pages ---------

DTYPES = {  # name: (array typecode, bits, SampleFormat)
    "uint8": ("B", 8, 1), "int8": ("b", 8, 2), "uint16": ("H", 16, 1), "int16": ("h", 16, 2),
    "uint32": ("I", 32, 1), "int32": ("i", 32, 2), "float32": ("f", 32, 3), "float64": ("d", 64, 3),
}

def pixels(dtype, width, height, spp=1, seed=1, page=0):
    """A deterministic test pattern (gradient + noise) as an array.array of `dtype`, interleaved samples."""
    code, bits, fmt = DTYPES[dtype]
    rnd = random.Random(seed * 1000 + page)
    a = array.array(code)
    if fmt == 3:
        vals = [math.sin(x / 7.0 + page) * 100.0 + rnd.random() for x in range(width * height * spp)]
    else:
        lo, hi = (0, (1 << bits) - 1) if fmt == 1 else (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
        span = min(hi - lo, 60000)
        vals = [lo + ((x * 37 + page * 11 + rnd.randrange(16)) % span) for x in range(width * height * spp)]
    a.fromlist(vals)
    return a

def _encode(values, byteorder):
    b = array.array(values.typecode, values)
    if (byteorder == ">") != (sys.byteorder == "big") and b.itemsize > 1:
        b.byteswap()
    return b.tobytes()

TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1, 11: 4, 12: 8, 16: 8}

def write_tiff(path, pages, byteorder="<", bigtiff=False):
    """pages: dicts with width, height, dtype, spp, data (array.array, interleaved), and optional
    tile=(tw, th), rows_per_strip, planar (1|2), description, subfiletype, tags=[(tag, type, values)].
    Values: bytes for types 1/2/7, a list of numbers otherwise (rationals as (num, den) pairs)."""
    bo = byteorder
    out = bytearray()
    if bigtiff:
        out += (b"II" if bo == "<" else b"MM") + struct.pack(bo + "HHHQ", 43, 8, 0, 0)
    else:
        out += (b"II" if bo == "<" else b"MM") + struct.pack(bo + "HI", 42, 0)
    offset_fmt, count_fmt, entry_count_fmt = ("Q", "Q", "Q") if bigtiff else ("I", "I", "H")
    inline = 8 if bigtiff else 4
    prev_next_ptr = 8 if bigtiff else 4  # where the previous "next IFD" offset lives

    def pad():
        if len(out) % 2:
            out.append(0)

    for pg in pages:
        w, h, spp = pg["width"], pg["height"], pg.get("spp", 1)
        code, bits, fmt = DTYPES[pg["dtype"]]
        esize = bits // 8
        data = pg["data"]
        planar = pg.get("planar", 1)
        # Raw bytes as planes (planar 2) or interleaved (planar 1).
        if planar == 2 and spp > 1:
            planes = [array.array(code, data[c::spp]) for c in range(spp)]
            blobs_src = [_encode(p, bo) for p in planes]
            px_bytes = esize
        else:
            blobs_src = [_encode(data, bo)]
            px_bytes = esize * spp
        offsets, counts = [], []
        tile = pg.get("tile")
        for src in blobs_src:
            if tile:
                tw, th = tile
                for y0 in range(0, h, th):
                    for x0 in range(0, w, tw):
                        blk = bytearray(tw * th * px_bytes)
                        for r in range(min(th, h - y0)):
                            row = src[((y0 + r) * w + x0) * px_bytes:((y0 + r) * w + min(w, x0 + tw)) * px_bytes]
                            blk[r * tw * px_bytes:r * tw * px_bytes + len(row)] = row
                        pad(); offsets.append(len(out)); counts.append(len(blk)); out += blk
            else:
                rps = pg.get("rows_per_strip", h)
                for y0 in range(0, h, rps):
                    blk = src[y0 * w * px_bytes:min(h, y0 + rps) * w * px_bytes]
                    pad(); offsets.append(len(out)); counts.append(len(blk)); out += blk
        tags = []
        def t(tag, typ, vals): tags.append((tag, typ, vals))
        if pg.get("subfiletype") is not None: t(254, 4, [pg["subfiletype"]])
        t(256, 4, [w]); t(257, 4, [h]); t(258, 3, [bits] * spp); t(259, 3, [1])
        t(262, 3, [2 if spp >= 3 else 1])
        if pg.get("description") is not None: t(270, 2, pg["description"].encode("utf-8") + b"\0")
        for tag, typ, vals in pg.get("tags", []): t(tag, typ, vals)
        if tile:
            t(322, 3, [tile[0]]); t(323, 3, [tile[1]])
            t(324, 16 if bigtiff else 4, offsets); t(325, 16 if bigtiff else 4, counts)
        else:
            t(273, 16 if bigtiff else 4, offsets); t(279, 16 if bigtiff else 4, counts)
            t(278, 4, [pg.get("rows_per_strip", h)])
        t(277, 3, [spp]); t(284, 3, [planar]); t(339, 3, [fmt] * spp)
        tags.sort(key=lambda x: x[0])
        # Out-of-line values first, then the IFD.
        encoded = []
        for tag, typ, vals in tags:
            if typ in (1, 2, 7):
                raw, count = bytes(vals), len(vals)
            elif typ == 5:
                raw = b"".join(struct.pack(bo + "II", n, d) for n, d in vals); count = len(vals)
            else:
                f = {3: "H", 4: "I", 11: "f", 12: "d", 16: "Q"}[typ]
                raw = struct.pack(bo + f * len(vals), *vals); count = len(vals)
            if len(raw) > inline:
                pad(); off = len(out); out += raw
                encoded.append((tag, typ, count, None, off))
            else:
                encoded.append((tag, typ, count, raw.ljust(inline, b"\0"), None))
        pad()
        ifd = len(out)
        struct.pack_into(bo + offset_fmt, out, prev_next_ptr, ifd)
        out += struct.pack(bo + entry_count_fmt, len(encoded))
        for tag, typ, count, raw, off in encoded:
            out += struct.pack(bo + "HH" + count_fmt, tag, typ, count)
            out += raw if raw is not None else struct.pack(bo + offset_fmt, off)
        prev_next_ptr = len(out)
        out += struct.pack(bo + offset_fmt, 0)
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(out)
    os.replace(tmp, path)
    return len(out)

def page(dtype, w, h, spp=1, seed=1, index=0, **kw):
    d = dict(width=w, height=h, dtype=dtype, spp=spp, data=pixels(dtype, w, h, spp, seed, index))
    d.update(kw)
    return d

# --- vendor metadata layouts -----------------------------------------------------------------

def fei_block(hv=15000, pixel=1.5e-9, width=256):
    hfw = pixel * width
    return f"""[User]
Date=05/01/2024
Time=10:00:00 AM
User=operator
UserText=
[System]
Type=DualBeam
Dnumber=9922145
Software=7.6.2.4321
Source=FEG
Column=Elstar
Chamber=xT-Chamber
Stage=5x125
SystemType=Helios NanoLab 600i
[Beam]
HV={hv}
Spot=3
ScanRotation=0
Beam=EBeam
Scan=EScan
[EBeam]
Source=FEG
ColumnType=Elstar
HV={hv}
HFW={hfw:.6g}
WD=0.0041
BeamCurrent=1e-10
EmissionCurrent=3.5e-06
ApertureDiameter=3.2e-05
LensMode=Immersion
[Scan]
InternalScan=true
Dwelltime=3e-06
PixelWidth={pixel:.6g}
PixelHeight={pixel:.6g}
HorFieldsize={hfw:.6g}
FrameTime=0.6
[Stage]
StageX=0.001
StageY=0.002
StageZ=0.003
StageR=0.5236
StageT=0
StageTb=0
[Detectors]
Number=1
Name=TLD
Mode=SE
[TLD]
Contrast=50
Brightness=40
[Image]
MagCanvasRealWidth=0.1275
DigitalContrast=1
"""

def zeiss_block():
    pairs = [
        ("DP_DETECTOR_CHANNEL", "Signal A = InLens"), ("AP_MAG", "Mag = 5.00 K X"), ("AP_WD", "WD = 8.5 mm"),
        ("AP_ACTUALKV", "EHT = 15.00 kV"), ("AP_PIXEL_SIZE", "Pixel Size = 1.5 nm"), ("AP_IPROBE", "I Probe = 100 pA"),
        ("AP_DWELL_TIME", "Dwell Time = 100 ns"), ("AP_DATE", "Date :22 Jan 2024"), ("AP_TIME", "Time :10:00:00"),
        ("AP_STAGE_AT_X", "Stage at X = 10.5 mm"), ("AP_STAGE_AT_Y", "Stage at Y = 20.25 mm"),
        ("AP_STAGE_AT_Z", "Stage at Z = 25.0 mm"), ("AP_STAGE_AT_T", "Stage at T = 0.0 \xb0"),
        ("AP_STAGE_AT_R", "Stage at R = 30.0 \xb0"), ("AP_APERTURESIZE", "Aperture Size = 30.00 \xb5m"),
        ("SV_SERIAL_NUMBER", "Serial No. = 4321"), ("SV_VERSION", "Version = V06.03"),
        ("SV_INSTRUMENT_ID", "Instrument = SIGMA 300"), ("DP_GUN_TYPE", "Gun Type = Field Emission"),
        ("AP_VACUUM", "Vac = 3.2e-004 Pa"),
    ]
    text = "\r\n0\r\n" + "".join(f"{k}\r\n{v}\r\n" for k, v in pairs)
    return text.encode("latin-1") + b"\0"

def tvips_header(version=2):
    """TIFF tag 37706: the version-1 block of 32-bit integers, then the version-2 (EM-MENU 4) block."""
    v1 = struct.pack("<i", version) + b"TVIPS test image".ljust(80, b"\0")
    v1 += struct.pack("<40i", *([200, 0, 0, 50000, 1, 0, 0, 0, 0, 0] + [0] * 30))
    def u16(s, n): return s.encode("utf-16-le").ljust(n, b"\0")[:n]
    v2 = u16("img_0001", 160) + u16("D:/data", 160)
    v2 += struct.pack("<7I", 128, 128, 1, 1, 2, (2024 << 16) | (5 << 8) | 1, 10 * 3600 + 30 * 60)
    v2 += u16("diffraction test", 1024) + u16("", 1024)
    v2 += struct.pack("<16f", *([1.0] * 16)) + b"\0" * 256
    v2 += struct.pack("<2I", 1, 0) + struct.pack("<4f", 0.25, 0.25, 0.0, 0.0) + struct.pack("<32f", *([0.0] * 32))
    v2 += u16("JEM-2100F", 160) + struct.pack("<f", 200000.0) + struct.pack("<32f", *([0.0] * 32)) + struct.pack("<32f", *([0.0] * 32))
    v2 += struct.pack("<I", 1) + struct.pack("<3f", 50000.0, 1.0, 1.0) + struct.pack("<I", 2)
    v2 += struct.pack("<5f", 1e-5, 2e-5, 0.0, 10.0, 0.0) + struct.pack("<6f", *([0.0] * 6)) + struct.pack("<7f", *([0.0] * 7))
    v2 += struct.pack("<3f", 0.0, 0.0, 0.0) + struct.pack("<I", 0) + struct.pack("<32f", *([0.0] * 32))
    v2 += u16("TemCam-XF416", 160) + struct.pack("<2f", 15.5, 15.5) + struct.pack("<4i", 0, 0, 1, 1)
    v2 += struct.pack("<3f", 500.0, 1.0, 25.0) + u16("gain+dark", 160) + struct.pack("<2f", 1.0, 0.0)
    v2 += struct.pack("<32f", *([0.0] * 32)) + u16("", 1024) + u16("", 1024) + struct.pack("<I", 0xAAAAAAAA)
    return v1 + (v2 if version == 2 else b"")

def tescan_block():
    return """[MAIN]
Company=TESCAN
Date=2024-05-01
Time=10:00:00
Device=MIRA3 LMH
SerialNumber=112-0123
Software=TESCAN Essence 1.2.3
UserName=operator
Magnification=5000
PixelSizeX=1.5e-08
PixelSizeY=1.5e-08
[SEM]
HV=15000.0
WD=0.0045
Detector=SE
DwellTime=1e-05
EmissionCurrent=0.00012
PredictedBeamCurrent=1e-10
SpotSize=3.2e-09
StageX=0.001
StageY=0.002
StageZ=0.0105
StageRotation=30
StageTilt=0
ChamberPressure=0.01
ScanMode=RESOLUTION
"""

def jeol_sidecar(w, h):
    return f"""$CM_FORMAT JEOL/SEM
$CM_VERSION 1.0
$CM_INSTRUMENT JSM-7800F
$CM_SIGNAL SEI
$CM_ACCEL_VOLT 15.00
$CM_MAG 5000
$CM_DATE 2024/05/01
$CM_TIME 10:00:00
$CM_FULL_SIZE {w} {h}
$SM_MICRON_BAR 50
$$SM_MICRON_MARKER 100nm
$SM_WD 10.0
$SM_PIXEL_SIZE 1.5
$SM_DWELL_TIME 10.0
$SM_EMI_CURRENT 9.5
$SM_SCAN_ROTATION 0
"""

def ela_description(frames):
    return json.dumps({
        "microscope": {"vendor": "Thermo Fisher Scientific", "model": "Spectra 300", "serial": "3954",
                       "high_tension": {"value": 300, "unit": "kV"}, "camera_length": {"value": 0.5, "unit": "m"},
                       "mode": "diffraction"},
        "detector": {"name": "ELA", "vendor": "Dectris", "pixel_size": {"value": 75, "unit": "um"},
                     "frame_time": {"value": 0.01, "unit": "s"}, "threshold_keV": 20.0},
        "acquisition": {"start": "2024-05-01T10:00:00.125+02:00", "frames": frames, "operator": "operator"},
    }, indent=1)

def ome_description(w, h, pixel_um):
    return (f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
            f'<Instrument ID="Instrument:0"><Microscope Manufacturer="Zeiss" Model="Crossbeam 550"/></Instrument>'
            f'<Image ID="Image:0" Name="tiles"><AcquisitionDate>2024-05-01T10:00:00Z</AcquisitionDate>'
            f'<Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="int16" SizeX="{w}" SizeY="{h}" SizeZ="1" SizeC="1" SizeT="1" '
            f'PhysicalSizeX="{pixel_um}" PhysicalSizeXUnit="\u00b5m" PhysicalSizeY="{pixel_um}" PhysicalSizeYUnit="\u00b5m">'
            f'<Channel ID="Channel:0:0" Name="SE2"/><TiffData/></Pixels></Image></OME>')

def write_vendor_set(out, size=128, seed=1):
    """One file per vendor layout and pixel layout; returns {name: path}. Sizes scale with `size`."""
    os.makedirs(out, exist_ok=True)
    w, h = size, size * 3 // 4
    files = {}
    def p(name): files[name] = os.path.join(out, name); return files[name]
    fei = fei_block(width=w).encode() + b"\0"
    write_tiff(p("fei_helios.tif"), [page("uint16", w, h, seed=seed, rows_per_strip=max(1, h // 4),
              tags=[(34682, 2, fei)], description="")])
    # Zeiss: uint8 with a thumbnail page (reduced resolution, NewSubfileType 1).
    write_tiff(p("zeiss_sigma.tif"), [page("uint8", w, h, seed=seed + 1, tags=[(34118, 2, zeiss_block())]), page("uint8", max(1, w // 4), max(1, h // 4), seed=seed, subfiletype=1)])
    write_tiff(p("tvips_camera.tif"), [page("uint16", w, w, seed=seed + 2, tags=[(37706, 7, tvips_header())])])
    write_tiff(p("tescan_mira.tif"), [page("uint16", w, h, seed=seed + 3, tags=[(50431, 2, tescan_block().encode() + b"\0")])],
               byteorder=">")
    write_tiff(p("jeol_jsm.tif"), [page("uint8", w, h, seed=seed + 4)])
    with open(os.path.join(out, "jeol_jsm.txt"), "w") as f:
        f.write(jeol_sidecar(w, h))
    frames = 4
    write_tiff(p("ela_diffraction.tif"), [page("uint16", w // 2, w // 2, seed=seed + 5, index=i,
              description=ela_description(frames) if i == 0 else None) for i in range(frames)], bigtiff=True)
    write_tiff(p("imagej_stack.tif"), [page("float32", w // 2, h // 2, seed=seed + 6, index=i,
              description=("ImageJ=1.54f\nimages=5\nslices=5\nunit=micron\nspacing=0.25\nloop=false\n" if i == 0 else None),
              tags=[(282, 5, [(2, 1)]), (283, 5, [(2, 1)]), (296, 3, [1])]) for i in range(5)], byteorder=">")
    write_tiff(p("ome_tiled.tif"), [page("int16", w, h, seed=seed + 7, tile=(32, 32), description=ome_description(w, h, 0.65))],
               bigtiff=True)
    write_tiff(p("rgb_preview.tif"), [page("uint8", w, h, spp=3, seed=seed + 8, tags=[(34682, 2, fei)])])
    write_tiff(p("rgb_planar.tif"), [page("uint8", w // 2, h // 2, spp=3, seed=seed + 9, planar=2, tags=[(34682, 2, fei)])])
    lab = json.dumps({"Beam.HV": "15000", "Scan.PixelSize": "1.5e-9", "Acquisition.Date": "2026-11-10T10:00:00+01:00",
                      "Instrument.Name": "lab-sem", "Detector.Name": "SE"})
    for dtype in ["int8", "int32", "uint32", "float64"]:
        write_tiff(p(f"lab_{dtype}.tif"), [page(dtype, w // 2, h // 2, seed=seed + 10, description=lab)])
    return files

def write_bad_set(out, good):
    """Inputs a converter must refuse cleanly; `good` is a valid TIFF to damage."""
    os.makedirs(out, exist_ok=True)
    data = open(good, "rb").read()
    files = {}
    def p(name): files[name] = os.path.join(out, name); return files[name]
    open(p("truncated.tif"), "wb").write(data[: len(data) // 2])
    open(p("empty.tif"), "wb").write(b"")
    open(p("text.tif"), "wb").write(b"this is a lab notebook page, not an image\n" * 20)
    write_tiff(p("bad_json.tif"), [page("uint16", 32, 24, description='{"Beam.HV": 15000, "Scan.PixelSize": ')])
    garbage = bytes(random.Random(5).randrange(256) for _ in range(300)) + b"\0"
    write_tiff(p("fei_garbage.tif"), [page("uint16", 32, 24, tags=[(34682, 2, garbage)])])
    write_tiff(p("tvips_garbage.tif"), [page("uint16", 32, 24, tags=[(37706, 7, b"\x07\x00\x00\x00" + b"\x01" * 300)])])
    write_tiff(p("unknown_instrument.tif"), [page("uint16", 32, 24, description="acquired on the old camera")])
    return files

def write_large(path, size):
    """A size x size float32 image with the lab's JSON description (fast: one row pattern repeated)."""
    row = array.array("f", [float(x % 251) for x in range(size)])
    desc = json.dumps({"Beam.HV": "15000", "Scan.PixelSize": "1.5e-9", "Acquisition.Date": "2026-11-10T10:00:00+01:00",
                       "Instrument.Name": "lab-sem", "Detector.Name": "SE"})
    data = array.array("f", row.tolist() * size)
    write_tiff(path, [dict(width=size, height=size, dtype="float32", spp=1, data=data, rows_per_strip=64, description=desc)])
