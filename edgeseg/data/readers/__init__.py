"""Readers for the official on-disk layouts of the driving-scene datasets.

Each reader returns labels in its native training label space (Cityscapes-19
trainIds, CamVid-11 for CamVid); use `edgeseg.data.open_dataset` to convert.
"""

from edgeseg.data.readers._common import Item, PairRule, Reader
from edgeseg.data.readers.acdc import ACDCDataset
from edgeseg.data.readers.bdd100k import BDD100KDataset
from edgeseg.data.readers.camvid import CamVidDataset
from edgeseg.data.readers.cityscapes import CityscapesDataset
from edgeseg.data.readers.darkzurich import DarkZurichDataset, DarkZurichPairs
from edgeseg.data.readers.gta5 import GTA5Dataset
from edgeseg.data.readers.nighttime_driving import NighttimeDrivingDataset
from edgeseg.data.readers.synthia import SynthiaDataset

__all__ = [
    "ACDCDataset",
    "BDD100KDataset",
    "CamVidDataset",
    "CityscapesDataset",
    "DarkZurichDataset",
    "DarkZurichPairs",
    "GTA5Dataset",
    "Item",
    "NighttimeDrivingDataset",
    "PairRule",
    "Reader",
    "SynthiaDataset",
]
