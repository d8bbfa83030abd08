"""A stock dockerd runs an image whose layers come from an https origin (nginx, private CA) and
from an S3 bucket (radosgw), attached with `extrafs docker attach`: the container reads the
files the layers hold, byte for byte."""
import hashlib

import http_util
import xf


def run_image_from(mount_path, dockerd, tmp, extrafs, name):
    """Attaches odd:latest from the mount into a fresh data-root, starts a dockerd there and
    runs a container that prints the md5 of /bin/busybox (a file of the base layer, read
    through overlayfs from the mount)."""
    root = tmp / f"root-{name}"
    (root / "overlay2" / "l").mkdir(parents=True)
    xf.run([extrafs, "docker", "attach", "odd:latest", "--mount", mount_path, "--data-root", root], timeout=120)
    d = dockerd(root)
    images = d.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert "odd:latest" in images, images
    out = d.docker("run", "--rm", "--network", "none", "odd:latest", "/bin/busybox", "md5sum", "/bin/busybox",
                   timeout=120).stdout
    d.close()
    return out.split()[0]


def test_docker_runs_an_image_served_over_https_and_s3(published_odd, mount, nginx, radosgw, dockerd, tmp, extrafs):
    want = hashlib.md5(open("/bin/busybox", "rb").read()).hexdigest()
    n = nginx(published_odd.path)
    https = mount(n.tls_url, options=f"cacert={n.ca.cert}")
    assert run_image_from(https.path, dockerd, tmp, extrafs, "https") == want
    assert https.stats()["bytes_fetched"] > 0

    bucket = http_util.put_store(radosgw, published_odd.path)
    creds = http_util.credentials_file(tmp / "creds", radosgw.access_key, radosgw.secret_key)
    s3 = mount(f"s3://{bucket}", options=http_util.s3_options(radosgw, creds))
    assert run_image_from(s3.path, dockerd, tmp, extrafs, "s3") == want
    s = s3.stats()
    assert s["bytes_fetched"] > 0 and s["backend_errors"] == 0, s
