"""Export a run's global model as a standard artefact (MONAI bundle, TorchScript, ONNX) with the
card a site needs to apply and trust it.

The modules, one concept each:

- ``bundle``: The MONAI bundle form of an exported model: `configs/metadata.json`,
  `configs/inference.json` and `models/model.pt`, read by MONAI's bundle tools.
- ``card``: The model card an export carries: what a site needs to apply the model and to trust
  it.
- ``cli``: `consortia model export`: a study's global model as a standard artefact for the
  clinic.
- ``exporter``: Export a run's global model as TorchScript, ONNX or a MONAI bundle, with its
  card.
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.server.export.bundle import (
        BUNDLE_INFERENCE as BUNDLE_INFERENCE,
    )
    from consortia.server.export.bundle import (
        BUNDLE_METADATA as BUNDLE_METADATA,
    )
    from consortia.server.export.bundle import (
        BUNDLE_WEIGHTS as BUNDLE_WEIGHTS,
    )
    from consortia.server.export.bundle import (
        bundle_configs as bundle_configs,
    )
    from consortia.server.export.card import (
        CARD_FILE as CARD_FILE,
    )
    from consortia.server.export.card import (
        CARD_SCHEMA as CARD_SCHEMA,
    )
    from consortia.server.export.card import (
        NORMALISATION as NORMALISATION,
    )
    from consortia.server.export.card import (
        ExportSource as ExportSource,
    )
    from consortia.server.export.card import (
        build_card as build_card,
    )
    from consortia.server.export.card import (
        card_text as card_text,
    )
    from consortia.server.export.card import (
        read_manifest_preprocessing as read_manifest_preprocessing,
    )
    from consortia.server.export.exporter import (
        EXPORT_FORMATS as EXPORT_FORMATS,
    )
    from consortia.server.export.exporter import (
        ExportFormat as ExportFormat,
    )
    from consortia.server.export.exporter import (
        ExportResult as ExportResult,
    )
    from consortia.server.export.exporter import (
        export_model as export_model,
    )
    from consortia.server.export.exporter import (
        select_round as select_round,
    )

__all__ = [
    "BUNDLE_INFERENCE",
    "BUNDLE_METADATA",
    "BUNDLE_WEIGHTS",
    "CARD_FILE",
    "CARD_SCHEMA",
    "EXPORT_FORMATS",
    "NORMALISATION",
    "ExportFormat",
    "ExportResult",
    "ExportSource",
    "build_card",
    "bundle_configs",
    "card_text",
    "export_model",
    "read_manifest_preprocessing",
    "select_round",
]

_EXPORTS = {
    "BUNDLE_INFERENCE": "bundle",
    "BUNDLE_METADATA": "bundle",
    "BUNDLE_WEIGHTS": "bundle",
    "CARD_FILE": "card",
    "CARD_SCHEMA": "card",
    "EXPORT_FORMATS": "exporter",
    "ExportFormat": "exporter",
    "ExportResult": "exporter",
    "ExportSource": "card",
    "NORMALISATION": "card",
    "build_card": "card",
    "bundle_configs": "bundle",
    "card_text": "card",
    "export_model": "exporter",
    "read_manifest_preprocessing": "card",
    "select_round": "exporter",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
