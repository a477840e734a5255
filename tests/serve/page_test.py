#!/usr/bin/env python3
"""Drives `ldm serve`'s web page in headless Chromium: a prompt at a small size
and batch 2, then the hires fix (Lanczos, x2), then image to image from that
result (a click on it), then the hires result's settings read back from its
PNG; prints each one's image sizes and info text as JSON and saves a
screenshot of the first.   page_test.py URL SCREENSHOT.png"""
import base64
import json
import os
import sys

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

url, shot = sys.argv[1], sys.argv[2]
opts = Options()
for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,800"):
    opts.add_argument(a)
opts.binary_location = "/usr/bin/chromium"
drv = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def set_value(field, value):
    el = drv.find_element(By.ID, field)
    el.clear()
    el.send_keys(value)


def generate():
    """Clicks Generate and waits for the new results; their sizes and the info text."""
    drv.find_element(By.ID, "generate").click()
    WebDriverWait(drv, 120).until(lambda d: d.find_element(By.ID, "generate").is_enabled()
                                  and (d.find_elements(By.CSS_SELECTOR, "#images img.result") or d.find_element(By.ID, "error").text))
    imgs = drv.find_elements(By.CSS_SELECTOR, "#images img.result")
    for img in imgs:
        WebDriverWait(drv, 20).until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img))
    sizes = [drv.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", i) for i in imgs]
    return {"sizes": sizes, "info": drv.find_element(By.ID, "info").text, "error": drv.find_element(By.ID, "error").text}


try:
    drv.get(url)
    WebDriverWait(drv, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#sampler option")) > 0
                                 and len(d.find_elements(By.CSS_SELECTOR, "#hr-upscaler option")) > 0
                                 and len(d.find_elements(By.CSS_SELECTOR, "#model option")) > 0)
    for field, value in (("prompt", "a red cube on a table"), ("width", "64"), ("height", "64"), ("steps", "6"), ("batch", "2")):
        set_value(field, value)
    out = {"txt2img": generate()}
    drv.save_screenshot(shot)
    # the hires fix with an image upscaler, one image
    set_value("batch", "1")
    set_value("steps", "4")
    drv.find_element(By.CSS_SELECTOR, "#hires-box summary").click()
    drv.find_element(By.ID, "hires").click()
    Select(drv.find_element(By.ID, "hr-upscaler")).select_by_visible_text("Lanczos")
    set_value("hr-strength", "0.5")
    out["hires"] = generate()
    hires_png = drv.find_element(By.CSS_SELECTOR, "#images img.result").get_attribute("src")
    # image to image from the result just made (a click on it)
    drv.find_element(By.CSS_SELECTOR, "#images img.result").click()
    set_value("strength", "0.5")
    out["img2img"] = generate()
    out["models"] = [o.text for o in drv.find_elements(By.CSS_SELECTOR, "#model option")]
    # PNG Info: the hires result's settings read back into the form from its file
    png = os.path.join(os.path.dirname(os.path.abspath(shot)), "page_test_hires.png")
    with open(png, "wb") as f:
        f.write(base64.b64decode(hires_png.split(",", 1)[1]))
    set_value("prompt", "something else")
    drv.find_element(By.ID, "hires").click()  # off; the file turns it back on
    drv.find_element(By.ID, "pnginfo").send_keys(png)
    WebDriverWait(drv, 20).until(lambda d: d.find_element(By.ID, "prompt").get_attribute("value") != "something else")
    out["pnginfo"] = {k: drv.find_element(By.ID, k).get_attribute("value") for k in ("prompt", "steps", "width", "seed", "hr-upscaler")}
    out["pnginfo"]["hires"] = drv.find_element(By.ID, "hires").is_selected()
    print(json.dumps(out))
finally:
    drv.quit()
