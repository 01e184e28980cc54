"""Faces in raw video: a pretrained detector, a tracker that links detections into face
tracks, and alignment of each face into a square crop (the stage just below `data/`).

    detect.py   MTCNN (weights ship in the facenet-pytorch wheel), per frame
    track.py    detections -> face tracks (IoU and motion, gaps, smoothing)
    align.py    five landmarks -> a similarity-aligned face_size square
    video.py    one video end to end, the CSV and the preview, the per-annotation mapping
"""
