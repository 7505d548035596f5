"""A calibration folder generated from the bundled photos, for INT8 exports whose weights are random anyway."""

from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

from export import SAMPLE_IMAGES


def calibration_folder(folder: Path) -> Path:
    """14 crops, flips and colour shifts of the bundled photos: enough to calibrate, as latency ignores the weights."""
    for index, path in enumerate(sorted(SAMPLE_IMAGES.iterdir())):
        image = Image.open(path).convert("RGB")
        width, height = image.size
        three_quarters, quarter = (width * 3 // 4, height * 3 // 4), (width // 4, height // 4)
        crops = image.crop((0, 0, *three_quarters)), image.crop((*quarter, width, height))
        for number, variant in enumerate((image, ImageOps.mirror(image), ImageOps.flip(image), *crops,
                                          ImageEnhance.Color(image).enhance(0.3),
                                          ImageEnhance.Brightness(image).enhance(1.3))):
            variant.save(folder / f"{index}_{number}.jpg")
    return folder
